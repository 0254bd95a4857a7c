"""Bottom layer, the helpers every layer uses:

- console.py: what a run shows (its own lines, a progress bar where someone watches);
- example_draws.py: random draws per example keyed on (seed, step, global position);
- errors.py: UserError and the other user-facing errors, printed without a traceback;
- fileio.py: atomic file writes and checked reads;
- machine.py: what a result was measured on (CPU, cores, accelerators, versions);
- metrics.py: named sums around the one all-reduce, ensemble probabilities, ECE;
- plugins.py: plug-in discovery for the registries (methods, model families, sources);
- schedules.py: alpha, temperature and learning-rate schedules, functions of the step;
- timing.py: wall-clock helpers and inference latency.

May import: nothing of kd_research outside common/.
"""
