"""Named memory timings: what the NPU's memory port gets, as a configuration of the cycle
model, the mapper's latency tables and the serving simulator (``fluidnpu serve --memory
NAME``, docs/serving.md and docs/board.md).

One place for the figures: each preset holds the measurements it stands for and turns
them into the cycle model's :class:`~fluidnpu.hw.runner.MemTiming`;
``benchmarks/bench_board_sdram.py`` prints its fresh measurement next to the preset's.

* ``test`` (the default): the simulated memory of the RTL tests and the co-simulation,
  ``MemTiming()`` - a read answered 20 cycles after its request, one read and one
  write request per cycle (4 bytes a cycle each way on a 4-byte port).
* ``ulx3s-sdram``: the ULX3S SoC's path to its SDRAM (synth/litex_soc.py: the registered
  pipelined-to-classic adapter, LiteX's 8 KiB L2 cache, LiteDRAM's controller and the
  board's MT48LC16M16), one 32-bit access at a time, measured in migen's simulator with
  LiteDRAM's PHY model at the SoC's 40 MHz. The cycle model's read latency and request
  interval are the sequential figures rounded up: reads every 8 cycles with 8 cycles of
  latency, writes every 8 cycles. What it leaves out (so it is a lower bound on the board's cycles):
  the SoC's one master serialises reads and writes, the cycle model overlaps them;
  random reads (25 cycles, a cache line's refill) are slower than sequential ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from fluidnpu.hw.runner import MemTiming

__all__ = ["MemoryPreset", "MemoryPresetError", "MEMORY_PRESETS", "DEFAULT_MEMORY", "memory_preset",
           "memory_timing"]


class MemoryPresetError(ValueError):
    """An unknown memory preset name."""


@dataclass(frozen=True)
class MemoryPreset:
    name: str
    timing: MemTiming               #: what the cycle model and the mapper use
    summary: str                    #: one line for --help and tables
    measured: dict = field(default_factory=dict)     #: the figures behind ``timing``, if measured


def _sdram_preset() -> MemoryPreset:
    # benchmarks/bench_board_sdram.py --words 64 --sys-clk-mhz 40, 2026-12-03 (commit fa9dceb):
    # cycles per 32-bit access, one access in flight, 64 accesses per pattern, at the board
    # build's default SoC clock (at 50 MHz, commit 9f93754: 7.72, 7.52, 25.12)
    measured = {"read_sequential": 7.62, "write_sequential": 7.64, "read_random": 25.23, "clock_mhz": 40.0,
                "accesses_per_pattern": 64, "date": "2026-12-03", "commit": "fa9dceb",
                "source": "benchmarks/bench_board_sdram.py"}
    timing = MemTiming(latency=math.ceil(measured["read_sequential"]),
                       interval=math.ceil(max(measured["read_sequential"], measured["write_sequential"])))
    return MemoryPreset("ulx3s-sdram", timing,
                        "ULX3S SoC's SDRAM path (LiteDRAM, L2 cache, one access at a time): "
                        f"latency {timing.latency}, one read and one write every {timing.interval} cycles",
                        measured)


MEMORY_PRESETS: dict[str, MemoryPreset] = {
    "test": MemoryPreset("test", MemTiming(), "the RTL tests' memory model: latency 20, a read and a write "
                         "request every cycle"),
    "ulx3s-sdram": _sdram_preset(),
}
DEFAULT_MEMORY = "test"


def memory_preset(name: str) -> MemoryPreset:
    """The preset called ``name``; :class:`MemoryPresetError` names the value and the choices."""
    try:
        return MEMORY_PRESETS[name]
    except (KeyError, TypeError):
        raise MemoryPresetError(f"memory = {name!r}: not a memory preset; choose one of "
                                f"{', '.join(MEMORY_PRESETS)}") from None


def memory_timing(name: str) -> MemTiming:
    """The :class:`MemTiming` of the preset called ``name``."""
    return memory_preset(name).timing
