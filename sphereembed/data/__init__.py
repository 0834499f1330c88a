"""Datasets and batch samplers, in NumPy (no TensorFlow; JAX only in :mod:`~sphereembed.data.pairs`).

Sources. :func:`load_dataset` returns a :class:`Dataset` (uint8 images
``(N, H, W, C)``, int32 labels) for ``"mnist"``, ``"fashion_mnist"``,
``"mnist10k"`` (local IDX folders), ``"cifar10"`` and ``"cifar100"`` (TFDS),
and your own data: ``"folder:PATH"`` (a folder of images per class),
``"npz:PATH"`` and ``"tfds:NAME[:CONFIG]"`` (:mod:`~sphereembed.data.files`);
:meth:`Dataset.from_arrays` builds one from arrays. For the named datasets it
takes the first of these that has the data:

1. ``data_dir`` (``--config.data_dir``): a canonical IDX folder holding
   ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
   ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (gzip or
   not), or a folder containing the dataset's folder (``mnist/``,
   ``fashion-mnist/``, ``mnist10k/``). When given it must hold the data.
2. The environment variable ``SPHEREEMBED_DATA_DIR`` (:data:`DATA_DIR_ENV`).
3. ``../shared/data`` next to the repository or the working directory, and
   ``./data``.
4. TFDS: a dataset prepared in ``tfds_data_dir`` (array_record format, read
   without TensorFlow), or a download with ``download=True`` when the network
   answers.

Otherwise :class:`DataNotFoundError` explains every way to provide the data.
IDX files are read by :func:`read_idx`; a damaged file raises
:class:`CorruptDataError` naming the file.

Samplers. :class:`ShuffledSampler` and :class:`ClassBalancedSampler` (P x K
batches) yield index batches; epoch ``e`` depends only on ``(seed, e)``, so
training resumes exactly from a checkpoint. :func:`class_weights` and
:func:`subsample_classes` handle class imbalance.

Submodules imported by name: :mod:`~sphereembed.data.ndigit` (N-digit MNIST
for Hedged Instance Embeddings, with its seen/unseen class split and
occlusion-corrupted test sets) and :mod:`~sphereembed.data.pairs` (all pairs
or sampled pairs of a batch, jit-compatible).
"""

from sphereembed.data.idx import CorruptDataError, read_idx, write_idx
from sphereembed.data.samplers import (
    ClassBalancedSampler,
    ShuffledSampler,
    class_weights,
    subsample_classes,
)
from sphereembed.data.sources import (
    DATA_DIR_ENV,
    DataNotFoundError,
    Dataset,
    Split,
    check_dataset_name,
    load_dataset,
)

__all__ = [
    "DATA_DIR_ENV",
    "ClassBalancedSampler",
    "CorruptDataError",
    "DataNotFoundError",
    "Dataset",
    "ShuffledSampler",
    "Split",
    "check_dataset_name",
    "class_weights",
    "load_dataset",
    "read_idx",
    "subsample_classes",
    "write_idx",
]
