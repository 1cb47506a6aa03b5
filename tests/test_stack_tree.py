"""The stacking tree (hw/stack_tree.py) against numpy: a row of PE sums in, the sums of each
unit's ``k`` PEs out, compacted (unit ``u`` at position ``u``), wrapped at the width, a
row every cycle, ``stages_for(n)`` cycles later, for every ``k``; and, composed with the
PE array's per-PE sums, the stacked dot products of the policy (B_P, k)."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from fluidnpu.hw.reference import wrap
from fluidnpu.hw.stack_tree import StackTree


def stacked(row, k, width):
    """numpy model: unit u = PEs u*k .. u*k + k - 1 at position u (u < n/k)."""
    r = np.asarray(row, dtype=np.int64)
    return wrap(r.reshape(-1, k).sum(axis=1), width)


def run_rows(n, width, k, rows):
    """The tree's output rows, one per input row, read ``stages_for(n)`` cycles later."""
    dut = StackTree(n=n, width=width)
    lat = StackTree.stages_for(n)
    got = []

    async def tb(ctx):
        # n = 1 has no level and no clocked logic: time steps instead of clock edges
        step = (lambda: ctx.tick()) if lat else (lambda: ctx.delay(1e-6))
        ctx.set(dut.lk, k.bit_length() - 1)
        await step()                            # the per-position copies of lk
        for cyc in range(len(rows) + lat):
            if cyc < len(rows):
                for u in range(n):
                    ctx.set(dut.i[u], int(rows[cyc][u]))
            if cyc >= lat:
                got.append([ctx.get(dut.o[u]) for u in range(n)])
            await step()

    sim = Simulator(dut)
    if lat:
        sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return got


@pytest.mark.parametrize("n, width", [(4, 32), (8, 20), (16, 32), (2, 8), (1, 12)])
def test_every_k_matches_numpy(n, width):
    rng = np.random.default_rng(n * 100 + width)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1))
    for k in [1 << i for i in range(n.bit_length())]:
        rows = [rng.integers(lo, hi, n) for _ in range(6)]
        rows.append(np.full(n, hi - 1))                        # sums that wrap
        got = run_rows(n, width, k, rows)
        for r, (row, out) in enumerate(zip(rows, got)):
            exp = stacked(row, k, width)
            assert out[:n // k] == list(exp), (k, r, out, exp)


def test_composes_with_the_pe_array_to_the_stacked_dot_products():
    """Per-PE segment sums accumulated over a group, then stacked, equal the dot products of
    the units over their ``k*tp`` lanes accumulated (what the array computed until the tree
    moved), wrapping included."""
    from fluidnpu.hw.config import HwConfig
    from test_pe_array import group_sums
    cfg = HwConfig(tc=8, tp=4, tr=4, x_buf_elems=256, w_buf_elems=256, mem_bytes=4, acc_width=20)
    rng = np.random.default_rng(7)
    xs = [rng.integers(-128, 128, (8, 4)) for _ in range(40)]
    ws = [rng.integers(-128, 128, (8, 4)) for _ in range(40)]
    for bp, k in cfg.policies:
        per_pe = group_sums(cfg, xs, ws, bp)
        seg = cfg.tp // bp
        rows = [per_pe[i * cfg.tc:(i + 1) * cfg.tc] for i in range(bp)]
        got = run_rows(cfg.tc, cfg.acc_width, k, rows)
        for i in range(bp):
            for u in range(cfg.tc // k):
                direct = sum(int((x[u * k:(u + 1) * k, i * seg:(i + 1) * seg].astype(np.int64)
                                  * w[u * k:(u + 1) * k, i * seg:(i + 1) * seg]).sum())
                             for x, w in zip(xs, ws))
                assert got[i][u] == int(wrap(np.array([direct]), cfg.acc_width)[0]), (bp, k, i, u)


def test_a_wrong_k_is_caught():
    """The check tells stackings apart: the rows stacked by k = 2 differ from k = 4's."""
    rng = np.random.default_rng(3)
    rows = [rng.integers(-1000, 1000, 8) for _ in range(3)]
    got = run_rows(8, 32, 2, rows)
    assert got[0][:4] == list(stacked(rows[0], 2, 32))
    assert got[0][:2] != list(stacked(rows[0], 4, 32))


@pytest.mark.parametrize("kw, msg", [({"n": 6, "width": 8}, "n = 6"), ({"n": 0, "width": 8}, "n = 0"),
                                     ({"n": 4, "width": 0}, "width = 0"),
                                     ({"n": True, "width": 8}, "n = True")])
def test_bad_arguments_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        StackTree(**kw)
