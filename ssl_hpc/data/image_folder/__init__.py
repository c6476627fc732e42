"""Image-folder datasets (chest X-rays kept as files, not MedMNIST arrays), as :class:`LabeledDataset`.

Two layouts, told apart automatically (``layout: auto``) or named:

``split_folders``
    ``root/{train,val,test}/<class>/*.png`` -- the Kaggle pneumonia set (``chest_xray/``). Its val
    folder holds 16 images; ``val_from_train: 0.1`` instead carves a stratified, seeded val split
    out of the train images (the val folder's images, if any, join the train pool first).
``class_folders``
    ``root/<class>/*.png`` with no split folders -- the COVID-19 Radiography Database, whose class
    folders hold ``images/`` and ``masks/`` (``images_subdir: images``, ``masks_subdir: masks``).
    A stratified, seeded train/val/test split (``split_fractions``, ``split_seed``) is made once and
    saved next to the data (``root/.ssl_hpc_split_seed<seed>_<digest>.json``, the digest naming the
    split parameters), so it never changes: later loads read it, and fail, naming the file, if
    images were added to or removed from the folder since.

Class folders are taken in sorted order unless ``classes`` lists them (then only those, in that
order); hidden folders and ``__MACOSX`` are ignored, as are files without an image extension.
Masks (optional) pair with images by file name and load as uint8 {0, 1} ``[N, 1, H, W]``.

A relative ``root`` (and ``mask_root``) is resolved against the data root (the sweep's
``data_root``, else ``MEDMNIST_ROOT``, else ``~/.medmnist``): the same sweep YAML then runs on a
laptop and on the cluster, where only the data root differs, and relative paths never depend on
the folder a job happens to start in.

The steps of a load, one module each:

``index``
    which file is which example: the layout, the class folders, the labels (``scan`` lists the
    folders' entries, and holds the error every step raises);
``split``
    the saved split, for the layouts whose folders do not give one;
``masks``
    each image's mask, paired by file name;
``decode``
    a file to a uint8 array: channels, 16-bit images, resizing;
``cache``
    where the decoded tensors are kept, keyed by everything they depend on;
``load``
    the :class:`~ssl_hpc.data.splits.LabeledDataset`, decoded once, then read from the cache.

The dataset spec, :class:`~ssl_hpc.config.datasets.ImageFolderSpec`, lives with the sweep schema.
"""

from ssl_hpc.config.datasets import ImageFolderSpec
from ssl_hpc.data.image_folder.cache import CACHE_FOLDER, FORMAT, default_cache_dir
from ssl_hpc.data.image_folder.index import FolderIndex, image_folder_files, index_image_folder
from ssl_hpc.data.image_folder.load import load_image_folder
from ssl_hpc.data.image_folder.scan import SPLITS, DatasetFolderError, FileEntry
from ssl_hpc.data.image_folder.split import SPLIT_FILE_PREFIX, split_file_name, stratified_split

__all__ = [
    "CACHE_FOLDER",
    "FORMAT",
    "SPLITS",
    "SPLIT_FILE_PREFIX",
    "DatasetFolderError",
    "FileEntry",
    "FolderIndex",
    "ImageFolderSpec",
    "default_cache_dir",
    "image_folder_files",
    "index_image_folder",
    "load_image_folder",
    "split_file_name",
    "stratified_split",
]
