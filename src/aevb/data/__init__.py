"""The data path: datasets that keep their shape, recorded transforms, and loaders.

* :mod:`aevb.data.datasets` — :func:`load_dataset` → :class:`Dataset` (named benchmarks and the
  user's .npy/.npz/.csv/.parquet files);
* :mod:`aevb.data.files` — locating, verifying and downloading the benchmark files;
* :mod:`aevb.data.tables` — reading user files without unpickling, :func:`load_table`;
* :mod:`aevb.data.transforms` — binarization and standardisation as recorded objects;
* :mod:`aevb.data.loaders` — minibatches for the Trainer (:class:`TensorLoader`);
* :mod:`aevb.data.streaming` — rows read from disk as needed (:class:`StreamLoader` over an
  .npy or Parquet file or a folder of images), for data larger than memory;
* :mod:`aevb.data.streamed` — :func:`load_streamed` → a dataset whose training split streams.
"""

from aevb.data.datasets import DATASETS, Dataset, load_dataset
from aevb.data.files import default_cache_dir, default_data_dir
from aevb.data.loaders import (
    Batch,
    DynamicBinarization,
    Loader,
    SemiSupervisedLoader,
    TensorLoader,
    shard_of,
)
from aevb.data.streamed import StreamedDataset, load_streamed
from aevb.data.streaming import (
    ImageFolderSource,
    NpySource,
    ParquetSource,
    RowSource,
    StreamLoader,
    open_source,
    summarize,
)
from aevb.data.tables import load_table
from aevb.data.transforms import (
    BINARIZATIONS,
    Binarize,
    Standardize,
    Transforms,
    choose_transforms,
)

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "Batch",
    "Binarize",
    "Dataset",
    "DynamicBinarization",
    "ImageFolderSource",
    "Loader",
    "NpySource",
    "ParquetSource",
    "RowSource",
    "SemiSupervisedLoader",
    "Standardize",
    "StreamLoader",
    "StreamedDataset",
    "TensorLoader",
    "Transforms",
    "choose_transforms",
    "default_cache_dir",
    "default_data_dir",
    "load_dataset",
    "load_streamed",
    "load_table",
    "open_source",
    "shard_of",
    "summarize",
]
