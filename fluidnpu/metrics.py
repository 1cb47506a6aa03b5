"""Performance figures of one GEMM layer: MACs, utilisation and a compute/memory roofline.

Byte counts follow the host memory layout of ``docs/architecture.md``: every row is
padded to a multiple of ``mem_bytes`` and every array starts beat-aligned. The core's
memory port has a read and a write channel of one ``mem_bytes`` beat per cycle each
(``docs/architecture.md``, "The memory port"), so the memory bound is the larger of the
read beats and the write beats, not their sum: a bound the core could beat is no bound.
"""
from __future__ import annotations

from dataclasses import dataclass

from fluidnpu.hw.config import HwConfig

__all__ = ["Roofline", "out_elem_bytes", "compulsory_traffic", "compulsory_bytes", "roofline",
           "gemm_metrics"]


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def out_elem_bytes(cfg: HwConfig, requant: bool) -> int:
    """Bytes per output element: ``elem_bytes`` when requantised, else 4 (raw int32)."""
    return cfg.elem_bytes if requant else 4


def compulsory_traffic(cfg: HwConfig, r: int, p: int, c: int, *, bias: bool,
                       requant: bool) -> tuple[int, int]:
    """``(read_bytes, write_bytes)`` that must cross the memory port at least once: X, W
    and bias read, O written, padded rows (:func:`fluidnpu.hw.layout.compulsory_traffic`)."""
    from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
    from fluidnpu.hw.layout import compulsory_traffic as traffic
    return traffic(cfg, r, p, c, bias, OUT_REQUANT if requant else OUT_RAW)


def compulsory_bytes(cfg: HwConfig, r: int, p: int, c: int, *, bias: bool, requant: bool) -> int:
    """Bytes that must cross the memory port at least once: X, W, bias and O, padded rows."""
    return sum(compulsory_traffic(cfg, r, p, c, bias=bias, requant=requant))


@dataclass(frozen=True)
class Roofline:
    """Lower bounds on a layer's cycles from the MAC array and from the memory port."""

    macs: int
    compute_cycles: int
    bytes: int             #: read and write bytes together
    memory_cycles: int     #: the busier channel's beats (reads and writes overlap)

    @property
    def cycles(self) -> int:
        return max(self.compute_cycles, self.memory_cycles)

    @property
    def bound(self) -> str:
        """``"compute"`` or ``"memory"``: which limit sets :attr:`cycles`."""
        return "compute" if self.compute_cycles >= self.memory_cycles else "memory"


def roofline(cfg: HwConfig, r: int, p: int, c: int, *, bias: bool, requant: bool) -> Roofline:
    """The roofline of ``O[r x c] = X[r x p] . W[p x c]`` on ``cfg``."""
    if min(r, p, c) < 1:
        raise ValueError(f"shape ({r}, {p}, {c}): every dimension must be at least 1")
    macs = r * p * c
    rd, wr = compulsory_traffic(cfg, r, p, c, bias=bias, requant=requant)
    return Roofline(macs=macs, compute_cycles=_ceil_div(macs, cfg.lanes), bytes=rd + wr,
                    memory_cycles=max(_ceil_div(rd, cfg.mem_bytes), _ceil_div(wr, cfg.mem_bytes)))


def gemm_metrics(cfg: HwConfig, r: int, p: int, c: int, cycles: int, *,
                 bias: bool, requant: bool, bp: int = 1, k: int = 1) -> dict:
    """``macs``, ``utilisation``, ``roofline_cycles`` and ``roofline_efficiency`` of a run,
    and ``roofline_cycles_tiled``: the roofline of the traffic the tiling of policy
    ``(bp, k)`` really moves (``fluidnpu.sim.traffic``), with ``tiled_bytes`` and
    ``bound_tiled``. Where the tiled roofline is far above the compulsory one, the core
    waits on re-fetched operands, not on the array."""
    from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
    from fluidnpu.sim.traffic import tiled_traffic

    if cycles < 1:
        raise ValueError(f"cycles = {cycles}: must be at least 1")
    rl = roofline(cfg, r, p, c, bias=bias, requant=requant)
    tr = tiled_traffic(cfg, r, p, c, bp=bp, k=k, bias=bias,
                       out_mode=OUT_REQUANT if requant else OUT_RAW)
    tiled = max(rl.compute_cycles, tr.cycles)
    return {
        "macs": rl.macs,
        "utilisation": rl.macs / (cycles * cfg.lanes),
        "roofline_cycles": rl.cycles,
        "roofline_efficiency": rl.cycles / cycles,
        "roofline_cycles_tiled": tiled,
        "tiled_bytes": tr.bytes,
        "bound_tiled": "memory" if tr.cycles > rl.compute_cycles else "compute",
    }
