"""Campaigns: many runs with dependencies, run here or on Slurm.

stages.py lists a campaign's stages (teachers, the schemes' stages, the sweep, labels-only
and distilled students per seed, the report): the one list that pipeline.py runs in this
process, plan.py writes as plan.json and runs job by job, and slurm.py submits as job
arrays. candidates.py chooses hyper-parameters on validation. Training schemes that add
stages are plug-ins in schemes/ (chain.py, dml_cohort.py), one file each.

May import: every layer below (common ... tools).
"""
