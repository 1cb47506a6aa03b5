"""cocotb bench of the bus-wrapped core (``fluidnpu_core_wb``): GEMM layers driven through
the Wishbone CSR slave, memory served through the Wishbone master.

The run directory (``FLUIDNPU_RUN_DIR``, written by :mod:`fluidnpu.hw.bus_runner`) holds
``params.json`` (``{"cfg": ..., "timing": {...}, "layers": [{"fields": {...}, "timeout":
cycles}, ...]}``), ``mem.npy`` and ``regs.py``: the Python register module that
``fluidnpu regmap --format py`` generates, which the bench uses as a host driver would.

The CSR port is driven by :class:`~fluidnpu.hw.tb.wb_csr.Csr` with classic cycles (it
holds STB until ACK; the slave accepts classic and pipelined masters alike); memory is
a :class:`~fluidnpu.hw.tb.wb_memory.WishboneMemory`. Per layer: write the DESC window,
write PUSH.CMD, poll DONE_COUNT until it counts the layer, read LAST_CYCLES. Checks:
ID, VERSION and HWCFG* read their documented values; STATUS.BUSY is seen high after
the push; ERROR stays 0; no memory answer is outstanding once the layer is done.
Results: ``out.npy`` (memory after the run) and ``result.json`` (``{"cycles": [...],
"mem_stats": {...}}``).
"""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from fluidnpu.hw.tb.common import load_params
from fluidnpu.hw.tb.wb_csr import Csr
from fluidnpu.hw.tb.wb_memory import WishboneMemory

RESET_CYCLES = 5
CLOCK_NS = 10
RUN_DIR, PARAMS = load_params()


class BenchError(AssertionError):
    """The wrapped core misbehaved (register values, timeout, errors)."""


def _regs():
    spec = importlib.util.spec_from_file_location("fluidnpu_bench_regs", RUN_DIR / "regs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


async def run(dut) -> None:
    cfg, t = PARAMS["cfg"], PARAMS["timing"]
    regs = _regs()
    mem = np.load(RUN_DIR / "mem.npy").astype(np.uint8).ravel().copy()
    result = {"cycles": [], "mem_stats": {}}
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    dut.rst.value = 1
    WishboneMemory.drive_idle(dut)
    csr = Csr(dut)
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    model = WishboneMemory(dut, mem, mem_bytes=cfg["mem_bytes"], latency=t["latency"],
                           wr_latency=t.get("wr_latency"), interval=t["interval"], depth=t.get("depth"),
                           backpressure=t["backpressure"], seed=t["seed"])
    model.start()
    try:
        for name in ("ID", "VERSION", "HWCFG0", "HWCFG1", "HWCFG2"):
            got = await csr.read(regs.REGS[name])
            if got != regs.RESET[name]:
                raise BenchError(f"{name} reads {got:#010x}, the map says {regs.RESET[name]:#010x}")
        for li, layer in enumerate(PARAMS["layers"]):
            for off, word in regs.pack("DESC", layer["fields"]).items():
                await csr.write(off, word)
            await csr.write(regs.PUSH, 1 << regs.WINDOWS["DESC"]["bit"])
            status = await csr.read(regs.STATUS)
            if not status & 3:
                raise BenchError(f"layer {li}: STATUS = {status:#x} right after PUSH: neither BUSY "
                                 f"nor CMD_PENDING")
            start = model.cycle
            while (await csr.read(regs.DONE_COUNT)) < li + 1:
                if model.cycle - start > layer["timeout"]:
                    raise BenchError(f"layer {li}: not done {layer['timeout']} cycles after PUSH "
                                     f"(memory: {model.stats})")
            cycles = await csr.read(regs.LAST_CYCLES)
            err = await csr.read(regs.ERROR)
            if err:
                raise BenchError(f"layer {li}: ERROR = {err:#x}")
            if not model.idle:
                raise BenchError(f"layer {li}: done with memory answers outstanding ({model.stats})")
            result["cycles"].append(cycles)
            result["mem_stats"] = model.stats
            dut._log.info("layer %d: %d cycles through the bus, %s", li, cycles, model.stats)
    finally:
        np.save(RUN_DIR / "out.npy", mem)
        (RUN_DIR / "result.json").write_text(json.dumps(result, indent=1))


if PARAMS is not None:
    @cocotb.test()
    async def gemm_through_wishbone(dut):
        await run(dut)
else:
    @cocotb.test()
    async def missing_run_dir(dut):
        raise BenchError("FLUIDNPU_RUN_DIR is not set: run this bench through "
                         "fluidnpu.hw.bus_runner.run_gemm_wishbone")
