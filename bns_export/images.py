"""Sample grids as PNG (a tiny encoder: no imaging dependency) and .npz sample archives."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import BNSError
from .fileio import atomic_write_bytes


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Data in [-1, 1] to 0..255."""
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(samples: np.ndarray, ncol: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(N, C, H, W) samples in [-1, 1] to one (H', W', C) uint8 image, row-major, `scale`x upsampled."""
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise BNSError(f"a PNG grid needs image samples (N, 1|3, H, W), got shape {tuple(samples.shape)}; use .npz")
    n, c, h, w = samples.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    img = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    tiles = to_uint8(samples).transpose(0, 2, 3, 1)
    for k in range(n):
        r, q = divmod(k, ncol)
        img[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = tiles[k]
    return img.repeat(scale, 0).repeat(scale, 1)


def encode_png(img: np.ndarray) -> bytes:
    """8-bit grayscale or RGB PNG bytes of an (H, W, 1|3) uint8 array."""
    h, w, c = img.shape
    color = {1: 0, 3: 2}[c]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def write_png(path: Path, img: np.ndarray) -> None:
    atomic_write_bytes(Path(path), encode_png(img))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    atomic_write_bytes(Path(path), buf.getvalue())
