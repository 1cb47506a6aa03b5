"""The memory traffic a layer's tiling really moves, and the roofline it sets.

The compulsory roofline (``fluidnpu.metrics.roofline``) counts every operand once. The
tiling of docs/architecture.md ("Tiling") moves more: with several reduction chunks X is
loaded again for every column tile, W (and bias) for every row tile unless the layer is a
single step, and each column tile's output rows are written in whole beats. This module
counts those beats from the cycle model's description of the steps (``_Layer``), so the
figure is the one the RTL's memory port sees (tests/test_traffic.py checks it against the
bench's read and write counts).
"""
from __future__ import annotations

from dataclasses import dataclass

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW
from fluidnpu.hw.runner import MemTiming

from .cycle_model import _check
from .cycle_steps import _ceil, _Layer

__all__ = ["Traffic", "tiled_traffic"]


@dataclass(frozen=True)
class Traffic:
    """Beats one layer moves through the memory port with its tiling."""

    read_beats: int
    write_beats: int
    mem_bytes: int

    @property
    def bytes(self) -> int:
        return (self.read_beats + self.write_beats) * self.mem_bytes

    @property
    def cycles(self) -> int:
        """Port cycles: the busier channel's beats (the read and the write channel each
        take one beat per cycle, side by side)."""
        return max(self.read_beats, self.write_beats)


def tiled_traffic(cfg: HwConfig, R: int, P: int, C: int, *, bp: int, k: int, bias: bool,
                  out_mode: int = OUT_RAW) -> Traffic:
    """Read and write beats of ``O[R x C] = X[R x P] . W[P x C]`` under policy ``(bp, k)``."""
    _check(cfg, R, P, C, bp, k, out_mode, MemTiming())
    lay = _Layer(cfg, R, P, C, bp, k, bias, out_mode)
    M, eb, F = cfg.mem_bytes, cfg.elem_bytes, lay.F
    nb = [_ceil(ln * eb, M) for ln in lay.chunks]
    ncols = [min(F, C - ct * F) for ct in range(lay.n_ct)]
    nbb = [(((ct * F * 4) & (M - 1)) + n * 4 + M - 1) // M if bias else 0
           for ct, n in enumerate(ncols)]
    # X: every step with several chunks (not resident), else once per row tile
    x = R * sum(nb) * (lay.n_ct if lay.n_ch > 1 and not lay.xres else 1)
    # W and bias: once per layer for a single step, else every step (bias on the last chunk)
    w = C * sum(nb) + sum(nbb)
    if not lay.single:
        w *= lay.n_rt
    # O: each row of each column tile in whole beats of ``dw`` elements
    wr = R * sum(_ceil(n, lay.dw) for n in ncols)
    return Traffic(read_beats=x + w, write_beats=wr, mem_bytes=M)
