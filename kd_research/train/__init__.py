"""Training runs: resolution (resolve.py), the driver and traced steps, state and
checkpoints, optimizers, evaluation, TensorBoard summaries, teachers, teacher sources and
the teacher-output cache, the run-directory format (workdir.py) and results.json (results.py).

May import: common, runtime, data, models, methods, config.
"""
