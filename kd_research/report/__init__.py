"""Reports from run directories only: rows.py groups runs into rows (the one source), tables,
per-pair method tables, learning curves and the SVG figure read it, pages.py renders them.

May import: common, runtime, data, models, methods, config, train.
"""
