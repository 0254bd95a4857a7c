"""Model families, registered by name (seed.py, cifar.py, pretrained.py), their shared parts,
and feature taps (stage, pooled) read from the same forward pass as the logits.

May import: common, runtime, data.
"""
