"""The row stage (hw/row_stage.py) against a Python model of its contract: groups loaded
as whole (per-PE sums) and pushed ``stack_stages`` cycles later come out as a head (in
order, with its slot) and as rows, stacked by ``k`` (numpy), read back from the row memory
two read-enabled cycles after their address, read as early as the contract allows, with
the read pipeline stalled at random; bias likewise; loads as dense as the spacing and the
head FIFO's depth allow, so a slot is reused while the drain could still be reading the
previous entry in it."""
from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.row_stage import RowStage

from test_stack_tree import stacked

HEAD = data.StructLayout({"a": 7, "b": 3})
CFGS = {
    "4x4": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4,
                    stage_entries=3),
    "8x4": HwConfig(tc=8, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4,
                    stage_entries=2, acc_width=20),
}


def _run(cfg, seed, stall, cycles=900, early=False, copies=1, dead_copy=None, k=2):
    """The mismatches against the contract's model (empty if none)."""
    dut = RowStage(cfg, head=HEAD, load_copies=copies)
    rng = random.Random(seed)
    tc, tp, D = cfg.tc, cfg.tp, cfg.stage_entries
    lat = RowStage.stack_stages(cfg)
    lo, hi = -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1
    slots = RowStage.slots(cfg)
    q = deque()                   # pushed, not popped: (entry, slot)
    bad = []

    async def tb(ctx):
        ctx.set(dut.lk, k.bit_length() - 1)
        next_push = 0
        n_push = 0
        tree = deque()            # loaded, not yet pushed: (push cycle, entry)
        reading = None            # (entry, slot, next row, earliest cycle of the next read)
        pipe = [None, None]       # expected (rows, bias) of the read register, the output
        for cyc in range(cycles):
            # -- load (spaced by the previous load's rows; at most D in the head FIFO and
            # the tree together) and the push stack_stages cycles after it -------------------
            load = cyc >= next_push and len(q) + len(tree) < D and rng.random() < 0.8
            if load:
                nrows = rng.randint(1, tp)
                vals = [[rng.randint(lo, hi) for _ in range(tc)] for _ in range(tp)]
                ent = {"vals": [list(stacked(r, k, cfg.acc_width)) for r in vals],
                       "bias": [rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(tc)],
                       "nrows": nrows, "head": {"a": rng.getrandbits(7), "b": rng.getrandbits(3)}}
                for i in range(tp):
                    for u in range(tc):
                        ctx.set(dut.w_vals[i * tc + u], vals[i][u])
                tree.append((cyc + lat, ent))
                next_push = cyc + nrows
            rep = (1 << copies) - 1 if load else 0
            if dead_copy is not None:
                rep &= ~(1 << dead_copy)
            ctx.set(dut.ld_rep, rep)
            push = bool(tree) and tree[0][0] == cyc
            ent = tree.popleft()[1] if push else None
            if push:
                for u in range(tc):
                    ctx.set(dut.w_bias[u], ent["bias"][u])
                ctx.set(dut.w_nrows, ent["nrows"])
                ctx.set(dut.w_head, ent["head"])
            ctx.set(dut.w_en, push)
            ctx.set(dut.w_en_rep, (1 << copies) - 1 if push else 0)
            # -- head ---------------------------------------------------------------------
            rdy = ctx.get(dut.r_rdy)
            if rdy != bool(q):
                bad.append((cyc, "r_rdy", rdy, len(q)))
            if q:
                e, slot = q[0]
                got = ctx.get(dut.r_data)
                if got.head.a != e["head"]["a"] or got.head.b != e["head"]["b"] or got.slot != slot:
                    bad.append((cyc, "head", got.slot, slot))
            # pop when no entry is being read; then read its rows (a row per read at most)
            pop = bool(q) and reading is None and rng.random() < 0.5
            ctx.set(dut.r_en, pop)
            # -- reads ----------------------------------------------------------------------
            en = rng.random() >= stall
            ctx.set(dut.rd_en, en)
            exp = None
            if reading is not None and cyc >= reading[3]:
                e, slot, r, _ = reading
                ctx.set(dut.rd_addr, slot * tp + r)
                ctx.set(dut.bias_addr, slot)
                if en:
                    exp = (e["vals"][r][:tc // k], e["bias"])
                    reading = None if r + 1 == e["nrows"] else (e, slot, r + 1,
                                                                cyc + 1 + rng.randint(0, 2))
            else:
                ctx.set(dut.rd_addr, rng.randrange(slots * tp))
                ctx.set(dut.bias_addr, rng.randrange(slots))
            if pipe[1] is not None:
                rows = [ctx.get(dut.rd_data[u]) for u in range(tc // k)]
                bias = [ctx.get(dut.bias_data[u]) for u in range(tc)]
                if (rows, bias) != pipe[1]:
                    bad.append((cyc, "row", rows, pipe[1][0]))
            if en:
                pipe = [exp, pipe[0]]
            if pop:
                e, slot = q.popleft()
                reading = (e, slot, 0, cyc + 1)
                if early and en:          # the first row's read in the pop's cycle
                    ctx.set(dut.rd_addr, slot * tp)
                    ctx.set(dut.bias_addr, slot)
                    exp = (e["vals"][0][:tc // k], e["bias"])
                    reading = None if e["nrows"] == 1 else (e, slot, 1, cyc + 1)
                    pipe[0] = exp
            if push:
                q.append((ent, n_push % slots))
                n_push += 1
            await ctx.tick()
        assert n_push > cycles // 8

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return bad


@pytest.mark.parametrize("name, copies, k", [("4x4", 1, 1), ("4x4", 4, 4), ("8x4", 3, 2),
                                             ("8x4", 1, 8)])
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_rows_and_heads_match_the_contract(name, copies, k, stall):
    bad = _run(CFGS[name], seed=len(name) * 100 + int(stall * 10) + copies, stall=stall,
               copies=copies, k=k)
    assert not bad, bad[:5]


@pytest.mark.parametrize("dead", [0, 2])
def test_each_load_copy_loads_its_columns(dead):
    """The shadow's columns load under their own copy of the push: with one copy held low
    the rows read back are stale (a stage that loaded on ``w_en`` alone would pass)."""
    bad = _run(CFGS["8x4"], seed=3, stall=0.0, copies=3, dead_copy=dead)
    assert bad and all(b[1] == "row" for b in bad)


def test_a_read_one_cycle_early_is_caught():
    """The check is strict enough: reading an entry's first row in the cycle of its pop,
    one cycle before the contract allows, reads a row not yet written."""
    bad = _run(CFGS["4x4"], seed=5, stall=0.0, early=True)
    assert any(b[1] == "row" for b in bad)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="cfg = 3"):
        RowStage(3, head=HEAD)
    with pytest.raises(TypeError, match="head = 7"):
        RowStage(CFGS["4x4"], head=7)
    with pytest.raises(ValueError, match="load_copies = 5: must be an integer from 1 to tc = 4"):
        RowStage(CFGS["4x4"], head=HEAD, load_copies=5)
