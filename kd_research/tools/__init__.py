"""Commands around training runs: bench.py (the throughput benchmark, its rows in
bench_runs.py built through train/resolve.py, its input-pipeline figures in bench_data.py),
profiling.py (the profiler summary), export.py (SavedModel + TFLite, verified),
tfrecord_shards.py (TFRecord shards from a folder or a built-in dataset: `./launch.sh
convert`), keras_peer.py (the Keras Distiller peer) and config_reference.py (docs/config.md
from the schema, with each field's meaning from config_fields.py).

May import: every layer below (common ... report).
"""
