"""cocotb bench of the simulated board serving a trace: the bus-wrapped NPU
(``fluidnpu_npu_wb``) with the Wishbone memory model, driven by
:func:`fluidnpu.board.serve.run_on_transport` (a scheduler from sched/ through the host
driver) over :class:`~fluidnpu.hw.tb.wb_transport.CocotbTransport`: the code
``fluidnpu board run`` runs over UARTBone, past the transport's creation.

The run directory (``FLUIDNPU_RUN_DIR``, written by :func:`.board.run_board_sim`) holds
``setup.pickle`` (the :class:`~.run.CosimSetup` and the memory timing) and ``regs.py``
(the generated register module). Result: ``result.pickle`` (the run's record).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge
from cocotb.triggers import RisingEdge

from fluidnpu.board.driver import load_regs
from fluidnpu.board.serve import run_on_transport
from fluidnpu.hw.tb.wb_csr import Csr
from fluidnpu.hw.tb.wb_memory import WishboneMemory
from fluidnpu.hw.tb.wb_transport import CocotbTransport

CLOCK_NS = 10


@cocotb.test()
async def serve(dut):
    run_dir = Path(os.environ["FLUIDNPU_RUN_DIR"])
    S = pickle.loads((run_dir / "setup.pickle").read_bytes())
    s, t = S["setup"], S["timing"]
    mem = np.zeros(len(s.mem_image), dtype=np.uint8)
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    dut.rst.value = 1
    WishboneMemory.drive_idle(dut)
    csr = Csr(dut)
    for _ in range(5):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    model = WishboneMemory(dut, mem, mem_bytes=s.cfg.mem_bytes, latency=t.latency, wr_latency=t.wr_latency,
                           interval=t.interval, depth=t.depth, backpressure=t.backpressure, seed=t.seed)
    model.start()
    transport = CocotbTransport(csr, mem)
    regs = load_regs(run_dir / "regs.py")
    rec = await bridge(lambda: run_on_transport(s, transport, regs, engine=S["engine"],
                                                max_cycles=S["max_cycles"]))()
    await RisingEdge(dut.clk)
    model.stop()
    rec.extra.update(mem_stats=model.stats, reads=transport.reads, writes=transport.writes)
    tmp = run_dir / "result.pickle.tmp"
    tmp.write_bytes(pickle.dumps(rec))
    tmp.replace(run_dir / "result.pickle")
