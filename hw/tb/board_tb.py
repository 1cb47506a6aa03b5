"""cocotb bench of the bus-wrapped NPU with its FBE (``fluidnpu_npu_wb``) driven by the
host driver: :func:`fluidnpu.board.session.run_job` with
:class:`~fluidnpu.board.driver.NpuDriver` over a
:class:`~fluidnpu.hw.tb.wb_transport.CocotbTransport`, the same code a board user runs.

The run directory (``FLUIDNPU_RUN_DIR``, written by
:func:`fluidnpu.hw.bus_runner.run_network_wishbone`) holds ``params.json``
(``{"cfg", "timing", "entries", "table", "res_addr", "res_shift", "arrivals",
"max_cycles"}``), ``mem.npy`` (the image the host loads) and ``regs.py`` (the generated
register module the driver is given). The simulated memory starts zeroed; the host
writes the image through the transport. Results: ``result.json`` (the host's run:
results, events, cycles, accesses, memory model statistics) and ``out.npy`` (the memory
as the host read it back).
"""
from __future__ import annotations

import json

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge
from cocotb.triggers import RisingEdge

from fluidnpu.board.driver import NpuDriver, load_regs
from fluidnpu.board.session import run_job
from fluidnpu.hw.tb.common import load_params
from fluidnpu.hw.tb.wb_csr import Csr
from fluidnpu.hw.tb.wb_memory import WishboneMemory
from fluidnpu.hw.tb.wb_transport import CocotbTransport

RESET_CYCLES = 5
CLOCK_NS = 10
RUN_DIR, P = load_params()


async def run(dut) -> None:
    t = P["timing"]
    image = np.load(RUN_DIR / "mem.npy").astype(np.uint8).ravel()
    mem = np.zeros_like(image)
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    dut.rst.value = 1
    WishboneMemory.drive_idle(dut)
    csr = Csr(dut)
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    model = WishboneMemory(dut, mem, mem_bytes=P["cfg"]["mem_bytes"], latency=t["latency"],
                           wr_latency=t.get("wr_latency"), interval=t["interval"], depth=t.get("depth"),
                           backpressure=t["backpressure"], seed=t["seed"])
    model.start()
    transport = CocotbTransport(csr, mem)
    drv = NpuDriver(transport, load_regs(RUN_DIR / "regs.py"))

    def host():
        return run_job(drv, entries=[int(e, 16) for e in P["entries"]], table=P["table"],
                       res_addr=P["res_addr"], res_shift=P["res_shift"],
                       arrivals=[tuple(a) for a in P["arrivals"]], mem_image=image.tobytes(),
                       read_back=(0, len(image)), max_cycles=P["max_cycles"])

    hr = await bridge(host)()
    await RisingEdge(dut.clk)
    model.stop()
    np.save(RUN_DIR / "out.npy", np.frombuffer(hr.mem, dtype=np.uint8))
    out = {"results": hr.results, "events": hr.events, "cycle0": hr.cycle0, "end": hr.end,
           "final_fbe": hr.final_fbe, "accesses": hr.accesses, "reads": transport.reads,
           "writes": transport.writes, "max_b": hr.max_b, "admitted_at": hr.admitted_at,
           "mem_stats": model.stats}
    tmp = RUN_DIR / "result.json.tmp"
    tmp.write_text(json.dumps(out))
    tmp.replace(RUN_DIR / "result.json")


if P is not None:
    @cocotb.test()
    async def network_through_driver(dut):
        await run(dut)
else:
    @cocotb.test()
    async def missing_run_dir(dut):
        raise AssertionError("FLUIDNPU_RUN_DIR is not set: run this bench through "
                             "fluidnpu.hw.bus_runner.run_network_wishbone")
