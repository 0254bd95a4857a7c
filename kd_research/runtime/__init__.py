"""Where a run executes: distribution strategies, multi-worker start-up, SIGTERM handling,
precision policy.

May import: common.
"""
