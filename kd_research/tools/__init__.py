"""Commands around training runs: the throughput benchmark (built through train/resolve.py),
the profiler summary, export (SavedModel + TFLite) and the Keras Distiller peer.

May import: every layer below (common ... report).
"""
