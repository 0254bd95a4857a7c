"""Where a run executes: distribute.py (strategies and chief/worker helpers), multiworker.py
(local multi-worker start-up), preemption.py (SIGTERM as a checkpoint request), precision.py
(the precision policy).

May import: common.
"""
