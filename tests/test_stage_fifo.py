"""The sliced stage FIFO (hw/stage_fifo.py) against a Python queue: every cycle the same
``r_rdy``, ``level`` and head entry; its ``r_rdy_rep`` copies equal ``r_rdy``; entries come
out whole and in order across slices, each slice's copy of the replicated field
(``r_flags``) is the head entry's copy for that slice, for power-of-two and other depths."""
from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from fluidnpu.hw.stage_fifo import StageFIFO


@pytest.mark.parametrize("width, depth, slices", [(64, 8, 4), (37, 5, 3), (9, 2, 9), (130, 3, 1)])
def test_matches_a_queue(width, depth, slices):
    dut = StageFIFO(width=width, depth=depth, slices=slices, rdy_copies=3, flag_width=3)
    rng = random.Random(width * 100 + depth)
    q = deque()
    bad = []

    async def tb(ctx):
        for cyc in range(600):
            # push only when the writer may (the FIFO has no w_rdy); pop at random
            push = len(q) < depth and rng.random() < (0.7 if cyc < 300 else 0.3)
            data = rng.getrandbits(width)
            rep = [rng.getrandbits(3) for _ in range(slices)]      # each slice its own copy
            pop = rng.random() < (0.4 if cyc < 300 else 0.8)
            ctx.set(dut.w_en, push)
            ctx.set(dut.w_en_rep, (1 << slices) - 1 if push else 0)
            ctx.set(dut.w_data, data)
            ctx.set(dut.w_flags.as_value(), sum(r << (3 * i) for i, r in enumerate(rep)))
            ctx.set(dut.r_en, pop)
            ctx.set(dut.r_en_rep, (1 << slices) - 1 if pop else 0)
            rdy, lvl = ctx.get(dut.r_rdy), ctx.get(dut.level)
            reps = ctx.get(dut.r_rdy_rep)
            if rdy != bool(q) or lvl != len(q) or reps != (0b111 if q else 0):
                bad.append((cyc, "rdy/level", rdy, lvl, reps, len(q)))
            if q and ctx.get(dut.r_data) != q[0][0]:
                bad.append((cyc, "data", ctx.get(dut.r_data), q[0][0]))
            # every slice's copy of the replicated field is the one written into that slice
            if q and [ctx.get(dut.r_flags[i]) for i in range(slices)] != q[0][1]:
                bad.append((cyc, "rep", [ctx.get(dut.r_flags[i]) for i in range(slices)], q[0][1]))
            popped = pop and q
            if popped:
                q.popleft()
            if push:
                q.append((data, rep))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert not bad, bad[:5]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="depth = 1"):
        StageFIFO(width=8, depth=1, slices=1)
    with pytest.raises(ValueError, match="slices = 9: must be at most width = 8"):
        StageFIFO(width=8, depth=4, slices=9)
