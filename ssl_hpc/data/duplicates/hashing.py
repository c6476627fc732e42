"""The fingerprint of an image: its 64-bit perceptual hash, and the thumbnail that confirms a match.

Each image gets a 64-bit perceptual hash (pHash: the signs, against their median, of the 8 x 8
lowest frequencies of the 2-D DCT of the 32 x 32 grayscale downsample: ``imagehash.phash``'s
construction, resampled by box-filter averaging instead of Lanczos), computed in batches on the uint8
tensors the pipeline already holds. Hashes are compared by Hamming distance (:func:`hamming`); a
hash match is confirmed by the Pearson correlation of the two 16 x 16 grayscale thumbnails
(:func:`correlation`), made in the same pass, as are the hashes of the left-right mirrored images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

HASH_SIZE = 8  # 8 x 8 low frequencies -> 64 bits
DCT_SIZE = 32  # hashed from the 32 x 32 grayscale downsample
THUMB_SIZE = 16  # pairs are confirmed on the 16 x 16 grayscale thumbnails
FLAT_NORM = 1e-3  # a thumbnail with less spread than this (gray levels) is flat


def _dct_matrix(n: int) -> torch.Tensor:
    """DCT-II matrix ``D`` (scipy's unnormalised convention, as imagehash uses): ``D @ x`` is the DCT
    of the column vector ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    return 2.0 * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))


@dataclass(frozen=True)
class Fingerprints:
    """Per image: the 64-bit pHash, and the zero-mean unit-norm 16 x 16 grayscale thumbnail that
    confirms a hash match (Pearson correlation = dot product)."""

    hashes: np.ndarray  # uint64 [N]
    thumbnails: np.ndarray  # float32 [N, 256], zero mean, unit norm (zeros for a flat image)
    means: np.ndarray  # float32 [N], mean gray level of the thumbnail (compares flat images)
    mirror_hashes: np.ndarray | None = None  # uint64 [N], the hashes of the left-right flipped images

    def __len__(self) -> int:
        return len(self.hashes)

    def mirrored(self) -> Fingerprints:
        """The fingerprints of the left-right flipped images (computed in the same pass)."""
        if self.mirror_hashes is None:
            raise ValueError("computed without mirror=True")
        side = THUMB_SIZE
        thumbnails = np.ascontiguousarray(self.thumbnails.reshape(-1, side, side)[:, :, ::-1]).reshape(len(self), -1)
        return Fingerprints(self.mirror_hashes, thumbnails, self.means)


def _gray_batches(images: torch.Tensor, batch_pixels: int):
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    per_image = max(1, images[0].numel()) if len(images) else 1
    batch = max(1, batch_pixels // per_image)
    for start in range(0, images.shape[0], batch):
        chunk = images[start : start + batch].to("cpu", torch.float32)
        yield start, chunk if chunk.shape[1] == 1 else chunk.mean(dim=1, keepdim=True)


def _resampling(length: int, size: int) -> torch.Tensor:
    """``[size, length]`` matrix resampling a 1-D signal to ``size`` values: box-filter averaging
    (adaptive average pooling) from longer signals, linear interpolation from shorter ones. Both
    are separable and commute with a flip, so ``R_h @ image @ R_w.T`` resizes an image."""
    impulses = torch.eye(length, dtype=torch.float64)[:, None, :]
    if length >= size:
        resampled = F.adaptive_avg_pool1d(impulses, size)
    else:
        resampled = F.interpolate(impulses, size=size, mode="linear", align_corners=False)
    return resampled[:, 0, :].T.contiguous()


def _bits(values: torch.Tensor) -> np.ndarray:
    """Rows of 64 values -> uint64 hashes: bit ``63 - k`` set when value ``k`` is above the row's median."""
    median = values.median(dim=1, keepdim=True).values
    return np.packbits((values > median).numpy(), axis=1).view(">u8")[:, 0]


def fingerprints(images: torch.Tensor, batch_pixels: int = 1 << 24, mirror: bool = False) -> Fingerprints:
    """:func:`perceptual_hash` and the verification thumbnails of a uint8 ``[N, C, H, W]`` tensor;
    with ``mirror``, also the hashes of the flipped images (a flip negates the odd horizontal
    frequencies of the DCT, so they cost almost nothing)."""
    count = images.shape[0]
    hashes = np.empty(count, dtype=np.uint64)
    mirror_hashes = np.empty(count, dtype=np.uint64) if mirror else None
    thumbnails = np.zeros((count, THUMB_SIZE * THUMB_SIZE), dtype=np.float32)
    means = np.zeros(count, dtype=np.float32)
    height, width = images.shape[-2:]
    # Resize to 32 x 32 then keep the 8 x 8 lowest DCT frequencies, or average 2 x 2 blocks into the
    # 16 x 16 thumbnail: each is one linear map per axis, applied as two small matrix products.
    dct = _dct_matrix(DCT_SIZE)[:HASH_SIZE]
    pool = torch.kron(
        torch.eye(THUMB_SIZE, dtype=torch.float64),
        torch.full((1, DCT_SIZE // THUMB_SIZE), THUMB_SIZE / DCT_SIZE, dtype=torch.float64),
    )
    rows, columns = _resampling(height, DCT_SIZE).float(), _resampling(width, DCT_SIZE)
    hash_columns, thumb_columns = dct @ columns, (pool @ columns).float()
    flip_signs = torch.tensor(
        [(-1.0) ** column for _ in range(HASH_SIZE) for column in range(HASH_SIZE)], dtype=torch.float64
    )
    for start, gray in _gray_batches(images, batch_pixels):
        stop = start + len(gray)
        resized_rows = rows @ gray[:, 0]  # [B, 32, W]
        low = (dct @ resized_rows.double() @ hash_columns.T).reshape(len(gray), -1)
        hashes[start:stop] = _bits(low)
        if mirror_hashes is not None:
            mirror_hashes[start:stop] = _bits(low * flip_signs)
        thumb = (pool.float() @ resized_rows @ thumb_columns.T).reshape(len(gray), -1)
        mean = thumb.mean(dim=1, keepdim=True)
        centred = thumb - mean
        norm = centred.norm(dim=1, keepdim=True)
        flat = norm < FLAT_NORM
        normalised = centred / norm.clamp_min(FLAT_NORM)
        thumbnails[start:stop] = torch.where(flat, torch.zeros_like(centred), normalised).numpy()
        means[start:stop] = mean[:, 0].numpy()
    return Fingerprints(hashes, thumbnails, means, mirror_hashes)


def perceptual_hash(images: torch.Tensor, batch_pixels: int = 1 << 24) -> np.ndarray:
    """64-bit DCT pHash of each image of a uint8 ``[N, C, H, W]`` tensor, as ``uint64 [N]``.

    Channels are averaged to gray, the image is resized to 32 x 32 (box-filter averaging from larger
    images, bilinear from smaller ones), and bit ``63 - k`` of the hash says whether the ``k``-th of
    the 8 x 8 lowest 2-D DCT coefficients (row-major, DC included) is above their median. Batches hold about
    ``batch_pixels`` input values, so a split of 224 px images never needs more than ~100 MB at a time.
    Half the bits are set (exactly 32 unless coefficients tie), so distances between hashes are almost always even.
    """
    return fingerprints(images, batch_pixels).hashes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance between uint64 hashes."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def correlation(a: Fingerprints, i: np.ndarray, b: Fingerprints, j: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Pearson correlation of the 16 x 16 thumbnails of pairs ``(a[i], b[j])``.

    Two flat (constant) images correlate 1 when their gray levels are within 2 of each other, else 0;
    a flat image and a textured one correlate 0.
    """
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), block):
        ii, jj = i[start : start + block], j[start : start + block]
        out[start : start + block] = np.einsum("nk,nk->n", a.thumbnails[ii], b.thumbnails[jj])
    flat_a = ~a.thumbnails[i].any(axis=1) if len(i) else np.zeros(0, dtype=bool)
    flat_b = ~b.thumbnails[j].any(axis=1) if len(j) else np.zeros(0, dtype=bool)
    both = flat_a & flat_b
    out[both] = (np.abs(a.means[i[both]] - b.means[j[both]]) <= 2.0).astype(np.float32)
    return out
