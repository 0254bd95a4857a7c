"""Distillation methods, one registered file each: at.py, cc.py, crd.py, deit.py (DeiT's
distillation token), crld.py, dist.py, dkd.py, fitnets.py, hinton_kd.py, mlkd.py, mutual.py (DML's
cohort objective), nkd.py, nst.py, ofa.py (OFA-KD across architectures, its stage branches
in ofa_branches.py), ofd.py, pkt.py, reviewkd.py, rkd.py, sdd.py, sp.py, uskd.py (teacher-free
self-distillation), vid.py, vitkd.py (between ViTs), wttm.py; and the
modifiers ctkd.py (learned temperature) and logit_standardization.py.
Shared: base.py (the Objective seam, Method and its base classes), combined.py (several
methods as one objective), losses.py (the soft-label
math), maps.py (pairing and resizing feature maps), connectors.py (student -> teacher feature
maps), registry.py (finds the methods by name, parses and combines them), distill_spec.py
(config.distill parsed once: the method list, their sections, alpha and T).

May import: common, runtime, data, models.
"""
