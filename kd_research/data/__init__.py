"""Datasets and their streams.

Sources, one registered file each (sources.py finds them by name): idx.py (Fashion-MNIST,
MNIST), cifar.py, synthetic.py, arrays.py (``npz:``), folder.py (``folder:``), tfrecord.py
(``tfrecord:``) and tfds_source.py (``tfds:``); image_files.py and scan.py inspect and check a
file source's images up front.
Splits and streams: datasets.py (train / validation / test splits and the transfer set),
splits.py (one split as a stream), streams.py (the example order and per-replica slices),
preprocess.py (encoded image -> model input).
Augmentation: augment.py (stateless, replica-independent batch ops), randaugment.py,
views.py (multi-view batches).
Storage: cache_rows.py (per-example rows read on demand: the teacher cache's files).

May import: common, runtime.
"""
