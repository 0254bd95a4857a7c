"""Model families, registered by name: article.py (the article's resnet_article, cnn_article and the
MLP), cifar.py (the CIFAR KD benchmark's family), imagenet.py (torchvision's ImageNet models),
vit.py (ViT / DeiT in timm's layout, with DeiT's distillation token),
pretrained.py (keras.applications backbones), user.py (the user's own code and .keras files)
and cohort.py (a DML cohort of students in one model).
Shared: registry.py (name -> builder), parts.py (building blocks), pytorch_layers.py
(PyTorch's layer conventions), taps.py (feature taps from the same forward pass as the logits),
stochastic_depth.py (DropPath with replica-independent masks).

May import: common, runtime, data.
"""
