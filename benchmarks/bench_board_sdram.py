"""What the NPU's memory master gets from the ULX3S SoC's SDRAM path, measured in migen's
simulator: the SoC's pipelined-to-classic adapter (synth/litex_soc.py) -> LiteX's 8 KiB L2
cache (128-bit lines, as ``add_sdram`` builds it) -> LiteDRAM's Wishbone bridge ->
LiteDRAM's controller -> LiteDRAM's SDRAM PHY model with the board's module
(MT48LC16M16, 16 bits, SDR) at the SoC clock. A generator plays the NPU's master: one
request after the other (the adapter allows one access in flight), sequential word
reads, then sequential writes, then reads at random addresses; it prints cycles per
32-bit access and MB/s at the SoC clock.

    .venv/bin/python benchmarks/bench_board_sdram.py [--words 2048] [--sys-clk-mhz 50]

Needs the ``board`` extra. docs/board.md has the figures and what they mean per layer;
the figures the serving simulator uses (``fluidnpu serve --memory ulx3s-sdram``) are kept
in :mod:`fluidnpu.sim.memory`, and this script prints them next to its fresh measurement.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


#: 32-bit words of the modelled SDRAM (4 banks x 16 rows x 512 columns x 2 bytes)
WORDS_MODELLED = 4 * 16 * 512 // 2


def build(sys_clk: float):
    from litedram.core import LiteDRAMCore
    from litedram.frontend.wishbone import LiteDRAMWishbone2Native
    from litedram.modules import MT48LC16M16
    from litedram.phy.model import SDRAMPHYModel
    from litex.soc.interconnect import wishbone
    from migen import Module

    from fluidnpu.synth.litex_soc import pipelined_to_classic

    class Rows(MT48LC16M16):
        """The board's module with 16 rows per bank instead of 8192 (same timings, row size
        and address pins): the PHY model keeps the whole array in the simulator (64 KiB
        here; 32 MiB would take the simulator minutes to set up)."""
        nrows = 16

    class Dut(Module):
        def __init__(self):
            module = Rows(sys_clk, "1:1")
            module.geom_settings.addressbits = 13     # A10 (precharge all) and the real pins
            self.submodules.phy = SDRAMPHYModel(module, data_width=16, clk_freq=sys_clk)
            self.submodules.core = LiteDRAMCore(self.phy, module.geom_settings, module.timing_settings,
                                                clk_freq=sys_clk)
            port = self.core.crossbar.get_port()
            self.submodules.npu = pipelined_to_classic()(30, 32, 0, WORDS_MODELLED)
            l2_slave = wishbone.Interface(data_width=max(128, port.data_width), address_width=32,
                                          addressing="word")
            self.submodules.l2 = wishbone.Cache(cachesize=8192 // 4, master=self.npu.classic, slave=l2_slave)
            self.submodules.bridge = LiteDRAMWishbone2Native(wishbone=l2_slave, port=port)
    return Dut()


def run(words: int, sys_clk: float, seed: int = 1) -> dict:
    from migen.sim import run_simulation
    dut = build(sys_clk)
    a = dut.npu
    rng = np.random.default_rng(seed)
    # LiteX's L2 cache has no valid bits: after reset every line holds tag 0, so the first
    # 8 KiB would "hit" without an SDRAM access; the patterns start above them
    size = WORDS_MODELLED
    base = 8192 // 4
    phases = [("read, sequential", [(base + i % (size - base), 0) for i in range(words)]),
              ("write, sequential", [(base + (words + i) % (size - base), 1) for i in range(words)]),
              ("read, random", [(int(x), 0) for x in rng.integers(base, size, words)])]
    out: dict = {}
    state = {"cycle": 0}

    def bench():
        for _ in range(200):          # the controller's start-up (refresh timer, bank machines)
            yield
            state["cycle"] += 1
        for name, reqs in phases:
            start = state["cycle"]
            for adr, we in reqs:
                yield a.cyc.eq(1)
                yield a.stb.eq(1)
                yield a.adr.eq(adr)
                yield a.we.eq(we)
                yield a.dat_w.eq(adr * 7 & 0xFFFFFFFF)
                yield a.sel.eq(0xF)
                yield
                state["cycle"] += 1
                waited = 0
                while not ((yield a.ack) or (yield a.err)):
                    yield
                    state["cycle"] += 1
                    waited += 1
                    if waited > 10_000:
                        raise AssertionError(f"{name}: no answer to word {adr} in 10,000 cycles")
                if (yield a.err):
                    raise AssertionError(f"ERR at word {adr}")
            out[name] = state["cycle"] - start
            yield a.stb.eq(0)
            yield a.cyc.eq(0)
            yield
            state["cycle"] += 1

    run_simulation(dut, bench())
    return {k: {"cycles": v, "cycles_per_word": v / words, "mb_s": 4 * words / v * sys_clk / 1e6}
            for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=2048)
    ap.add_argument("--sys-clk-mhz", type=float, default=50.0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = run(args.words, args.sys_clk_mhz * 1e6)
    print(f"SDRAM path of the ULX3S SoC at {args.sys_clk_mhz:g} MHz, {args.words} 32-bit accesses per pattern, "
          f"one in flight ({time.perf_counter() - t0:.0f} s of simulation):")
    for k, v in res.items():
        print(f"  {k:18} {v['cycles_per_word']:6.2f} cycles/word  {v['mb_s']:7.1f} MB/s")
    print(f"  (the NPU's port asks for up to 4 bytes per cycle: {4 * args.sys_clk_mhz:.0f} MB/s; "
          f"the SDRAM's own peak: 2 bytes per cycle, {2 * args.sys_clk_mhz:.0f} MB/s)")
    from fluidnpu.sim.memory import memory_preset
    p = memory_preset("ulx3s-sdram")
    m = p.measured
    keys = {"read, sequential": "read_sequential", "write, sequential": "write_sequential",
            "read, random": "read_random"}
    print(f"the preset 'ulx3s-sdram' (fluidnpu.sim.memory; {m['source']}, {m['date']}, {m['clock_mhz']:g} MHz, "
          f"commit {m['commit']}) holds " + ", ".join(f"{k} {m[v]:.2f}" for k, v in keys.items())
          + f" cycles/word -> the cycle model's {p.timing}")
    off = [k for k, v in keys.items() if k in res and abs(res[k]["cycles_per_word"] - m[v]) > 0.5]
    if off:
        print(f"  differs from this run by more than 0.5 cycles/word on: {', '.join(off)} "
              f"(update MEMORY_PRESETS if this run is the one to keep)")


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        main()
