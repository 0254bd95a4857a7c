"""Bottom layer: errors, atomic file I/O, timing, machine description, metric sums, schedules.

May import: nothing of kd_research outside common/.
"""
