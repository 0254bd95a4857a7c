"""Training runs: resolve.py (config and role -> what the driver needs), end_to_end.py
(one run end to end), driver.py and steps.py (the phases and the traced steps), state.py
(state and checkpoints), optimizers.py, dot.py (DOT's two-momentum SGD), evaluation.py (a run's and its members'),
summaries.py (TensorBoard), teachers.py (frozen teachers), teacher_sources.py,
teacher_cache.py and view_cache.py (teacher outputs, live or cached), workdir.py (the
run-directory format, a model's members included) and results.py (results.json).

May import: common, runtime, data, models, methods, config.
"""
