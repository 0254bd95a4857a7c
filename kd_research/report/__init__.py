"""Reports from run directories only: rows.py groups runs into rows (the one source);
tables.py (every Markdown table), methods.py (per-pair method tables and figure panels),
curves.py (learning curves), figure.py (the SVG figure) read them; pages.py renders the
pages.

May import: common, runtime, data, models, methods, config, train.
"""
