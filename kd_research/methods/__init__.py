"""Distillation methods: base.py (the Objective seam, Method, @register), one file per method,
the soft-label math (losses.py), connectors, logit standardization, and the registry that
finds the methods by name.

May import: common, runtime, data, models.
"""
