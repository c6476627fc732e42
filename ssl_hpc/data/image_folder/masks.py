"""Masks (optional), paired with their images by file name.

The mask of ``<stem>.<ext>`` is ``<stem><mask_suffix>.<any image ext>`` in ``<class>/<masks_subdir>/``
or, with ``mask_root``, in ``<mask_root>/[<split>/]<class>/``. The pairing is strict: a mask
without its image, an image without its mask or with two, and two images of one folder sharing a
stem each raise :class:`DatasetFolderError` naming the file. The paired masks are decoded
(:mod:`ssl_hpc.data.image_folder.decode`) to uint8 {0, 1} ``[N, 1, H, W]``.
"""

from __future__ import annotations

from pathlib import Path

from ssl_hpc.data.image_folder.scan import SPLITS, DatasetFolderError, FileEntry, _image_files


def _pair_masks(root, spec, pools, entries, data_root) -> dict[str, list[FileEntry]]:
    """For every image its mask; errors name a mask without its image, or an image without its mask."""
    mask_root = spec.resolve(spec.mask_root, data_root) if spec.mask_root is not None else None
    by_image: dict[Path, FileEntry] = {}
    image_dirs: dict[Path, list[FileEntry]] = {}  # every folder that holds images -> its images
    for pool in pools.values():
        for files in pool.values():
            for entry in files:
                image_dirs.setdefault(entry.path.parent, []).append(entry)
    for folder, images in image_dirs.items():
        class_dir = folder.parent if spec.images_subdir else folder
        if mask_root is not None:
            mask_dir = mask_root / class_dir.relative_to(root)
        else:
            mask_dir = class_dir / spec.masks_subdir
        if not mask_dir.is_dir():
            raise DatasetFolderError(f"mask folder {mask_dir} does not exist (for the images in {folder})")
        stems: dict[str, FileEntry] = {}
        for image in images:
            stem = image.path.stem
            if stem in stems:
                raise DatasetFolderError(
                    f"images {stems[stem].path.name} and {image.path.name} in {folder} share "
                    "a name, so they cannot be paired with masks by file name"
                )
            stems[stem] = image
        masks = {}
        for mask in _image_files(mask_dir, spec.extensions):
            stem = mask.path.stem
            if spec.mask_suffix and stem.endswith(spec.mask_suffix):
                stem = stem[: -len(spec.mask_suffix)]
            elif spec.mask_suffix:
                stem = None
            if stem is None or stem not in stems:
                expected = f"{stem}.*" if stem is not None else f"(a name ending in {spec.mask_suffix!r})"
                raise DatasetFolderError(f"mask {mask.path} has no image: expected {expected} in {folder}")
            if stem in masks:
                raise DatasetFolderError(
                    f"image {stems[stem].path} has two masks: {masks[stem].path.name} and "
                    f"{mask.path.name} in {mask_dir}"
                )
            masks[stem] = mask
        for stem, image in stems.items():
            if stem not in masks:
                raise DatasetFolderError(
                    f"image {image.path} has no mask: expected {stem}{spec.mask_suffix}.* in {mask_dir}"
                )
            by_image[image.path] = masks[stem]
    return {split: [by_image[e.path] for e in entries[split]] for split in SPLITS}
