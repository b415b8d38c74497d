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


# a 3x5 pixel font (rows top to bottom) for row labels: enough for solver names
_FONT = {
    "A": ".#.#.#####.##.#",
    "B": "##.#.###.#.###.",
    "C": ".###..#..#...##",
    "D": "##.#.##.##.###.",
    "E": "####..##.#..###",
    "F": "####..##.#..#..",
    "G": ".###..#.##.#.##",
    "H": "#.##.#####.##.#",
    "I": "###.#..#..#.###",
    "J": "..#..#..##.#.#.",
    "K": "#.##.###.#.##.#",
    "L": "#..#..#..#..###",
    "M": "#.#####.##.##.#",
    "N": "##.#.##.##.##.#",
    "O": ".#.#.##.##.#.#.",
    "P": "##.#.###.#..#..",
    "Q": ".#.#.##.###..##",
    "R": "##.#.###.#.##.#",
    "S": ".###...#...###.",
    "T": "###.#..#..#..#.",
    "U": "#.##.##.##.####",
    "V": "#.##.##.##.#.#.",
    "W": "#.##.########.#",
    "X": "#.##.#.#.#.##.#",
    "Y": "#.##.#.#..#..#.",
    "Z": "###..#.#.#..###",
    "0": "####.##.##.####",
    "1": ".#.##..#..#.###",
    "2": "##...#.#.#..###",
    "3": "##...#.#...###.",
    "4": "#.##.####..#..#",
    "5": "####..##...###.",
    "6": ".###..####.####",
    "7": "###..#.#..#..#.",
    "8": "####.#####.####",
    "9": "####.####..###.",
    "+": "....#.###.#....",
    "-": "......###......",
    ":": "....#.....#....",
    ".": ".............#.",
    "(": ".#.#..#..#...#.",
    ")": ".#...#..#..#.#.",
    " ": "...............",
}


def label_column(labels: list[str], row_height: int, pad: int, scale: int) -> np.ndarray:
    """A white (H, W, 1) column with each label in black, vertically centred on its grid row."""
    k = max(1, min(row_height // 8, 4))  # font pixel size
    width = max(len(t) for t in labels) * 4 * k + 2 * k
    col = np.full((len(labels) * row_height + pad, width, 1), 255, np.uint8)
    for r, text in enumerate(labels):
        y0 = pad + r * row_height + (row_height - 5 * k) // 2
        for c, ch in enumerate(text.upper()):
            glyph = _FONT.get(ch, _FONT[" "]).ljust(15, ".")
            for gy in range(5):
                for gx in range(3):
                    if glyph[gy * 3 + gx] == "#":
                        x0 = k + c * 4 * k + gx * k
                        col[y0 + gy * k : y0 + (gy + 1) * k, x0 : x0 + k] = 0
    return col


def labelled_grid(samples: np.ndarray, labels: list[str], ncol: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """`grid` with one text label per row at its left (e.g. ground truth / BNS / best baseline)."""
    img = grid(samples, ncol=ncol, pad=pad, scale=scale)
    row_height = (samples.shape[2] + pad) * scale
    col = label_column(labels, row_height, pad * scale, scale)[: img.shape[0]]
    if img.shape[2] == 3:
        col = col.repeat(3, axis=2)
    return np.concatenate([col, img], axis=1)


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
