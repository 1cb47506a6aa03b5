"""The row stage's head FIFO (hw/stage_fifo.py) against a Python queue: every cycle the
same ``r_rdy`` (a register with a counter of its own), ``level`` and head entry, entries
in order, for power-of-two and other depths, under dense and sparse pushes and pops."""
from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from fluidnpu.hw.stage_fifo import StageFIFO


@pytest.mark.parametrize("width, depth", [(64, 8), (37, 5), (9, 2), (130, 3)])
def test_matches_a_queue(width, depth):
    dut = StageFIFO(width=width, depth=depth)
    rng = random.Random(width * 100 + depth)
    q = deque()
    bad = []

    async def tb(ctx):
        for cyc in range(600):
            # push only when the writer may (the FIFO has no w_rdy); pop at random
            push = len(q) < depth and rng.random() < (0.7 if cyc < 300 else 0.3)
            data = rng.getrandbits(width)
            pop = rng.random() < (0.4 if cyc < 300 else 0.8)
            ctx.set(dut.w_en, push)
            ctx.set(dut.w_data, data)
            ctx.set(dut.r_en, pop)
            rdy, lvl = ctx.get(dut.r_rdy), ctx.get(dut.level)
            if rdy != bool(q) or lvl != len(q):
                bad.append((cyc, "rdy/level", rdy, lvl, len(q)))
            if q and ctx.get(dut.r_data) != q[0]:
                bad.append((cyc, "data", ctx.get(dut.r_data), q[0]))
            popped = pop and q
            if popped:
                q.popleft()
            if push:
                q.append(data)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert not bad, bad[:5]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="depth = 1"):
        StageFIFO(width=8, depth=1)
    with pytest.raises(ValueError, match="width = 0"):
        StageFIFO(width=0, depth=4)
