"""Bit-exact numpy reference of the NPU core's arithmetic (see docs/architecture.md)."""
from __future__ import annotations

import numpy as np

from .config import HwConfig
from .interface import OUT_RAW, OUT_REQUANT

__all__ = ["wrap", "requantize", "gemm_reference"]


def wrap(v: np.ndarray, width: int) -> np.ndarray:
    """Wrap integers to a signed ``width``-bit two's-complement value (as int64)."""
    v = np.asarray(v, dtype=np.int64)
    m = np.int64(1) << width
    return ((v + (m >> 1)) & (m - 1)) - (m >> 1)


def requantize(y: np.ndarray, mult: int, shift: int, lo: int, hi: int) -> np.ndarray:
    """``clamp(round((y * mult) / 2**shift), lo, hi)``, ties toward +infinity.

    Done in Python integers: ``y * mult`` can need up to 64 bits.
    """
    flat = [int(v) * int(mult) for v in np.asarray(y, dtype=np.int64).ravel()]
    if shift > 0:
        half = 1 << (shift - 1)
        flat = [(t + half) >> shift for t in flat]
    out = np.array([min(max(t, lo), hi) for t in flat], dtype=np.int64)
    return out.reshape(np.shape(y))


def gemm_reference(cfg: HwConfig, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                   *, out_mode: int = OUT_RAW, mult: int = 1, shift: int = 0,
                   relu: bool = False) -> np.ndarray:
    """What the core writes for one layer: int64 array of shape (R, C)."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    acc = wrap(x @ w, cfg.acc_width)
    if bias is not None:
        acc = wrap(acc + np.asarray(bias, dtype=np.int64)[None, :], cfg.acc_width)
    if out_mode == OUT_RAW:
        z = acc
    elif out_mode == OUT_REQUANT:
        z = requantize(acc, mult, shift, cfg.data_min, cfg.data_max)
    else:
        raise ValueError(f"out_mode = {out_mode!r}: must be OUT_RAW (0) or OUT_REQUANT (1)")
    if relu:
        z = np.maximum(z, 0)
    return z
