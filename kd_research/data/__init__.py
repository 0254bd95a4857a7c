"""Datasets: registered sources (one file each: idx, cifar, synthetic), the train/validation/
test splits and transfer set (datasets.py), the training and evaluation streams, and the
stateless, replica-independent augmentation.

May import: common, runtime.
"""
