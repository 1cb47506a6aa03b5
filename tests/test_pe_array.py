"""PE array against a numpy model of segmented dot products, each PE's on its own
(Amaranth simulator); the row stage's stacking tree adds stacked PEs (test_stack_tree.py)."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.pe_array import PEArray
from fluidnpu.hw.reference import wrap


def group_sums(cfg, xs, ws, bp):
    """numpy model: per cycle x/w of shape (tc, tp); returns the (tp*tc,) sums, segment i
    of PE pe at i*tc + pe."""
    tc, tp = cfg.tc, cfg.tp
    seg = tp // bp
    out = np.zeros(tc * tp, dtype=np.int64)
    for x, w in zip(xs, ws):
        prod = x.astype(np.int64) * w.astype(np.int64)
        for pe in range(tc):
            for i in range(bp):
                out[i * tc + pe] += prod[pe, i * seg:(i + 1) * seg].sum()
    return wrap(out, cfg.acc_width)


def run_groups(cfg, groups, bp):
    dut = PEArray(cfg, tag_width=8, valid_copies=3)
    got = []

    async def tb(ctx):
        ctx.set(dut.lbp, bp.bit_length() - 1)
        pending = [(gi, c, len(g), xw) for gi, g in enumerate(groups) for c, xw in enumerate(g)]
        for cyc in range(len(pending) + dut.latency + 2):
            if cyc < len(pending):
                gi, c, n, (x, w) = pending[cyc]
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, c == 0)
                ctx.set(dut.last, c == n - 1)
                ctx.set(dut.tag, gi)
                for pe in range(cfg.tc):
                    for l in range(cfg.tp):
                        ctx.set(dut.x[pe * cfg.tp + l], int(x[pe, l]))
                        ctx.set(dut.w[pe * cfg.tp + l], int(w[pe, l]))
            else:
                ctx.set(dut.valid, 0)
            await ctx.tick()
            # the valid's copies equal out_valid in every cycle
            reps = ctx.get(dut.out_valid_rep)
            assert reps == (0b111 if ctx.get(dut.out_valid) else 0), (cyc, reps)
            if ctx.get(dut.out_valid):
                got.append((cyc, ctx.get(dut.out_tag),
                            np.array([ctx.get(dut.out_vals[i]) for i in range(cfg.lanes)])))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return dut, got


@pytest.mark.parametrize("cfg", [HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4),
                                 HwConfig(tc=4, tp=8, tr=4, x_buf_elems=256, w_buf_elems=256, mem_bytes=4),
                                 HwConfig(tc=8, tp=4, tr=4, x_buf_elems=256, w_buf_elems=256, mem_bytes=4),
                                 # adder trees of 4 levels (4 stages) and of 1 (16-bit operands)
                                 HwConfig(tc=4, tp=16, tr=4, x_buf_elems=256, w_buf_elems=256, mem_bytes=4),
                                 HwConfig(tc=4, tp=2, tr=4, x_buf_elems=256, w_buf_elems=256, mem_bytes=4,
                                          data_width=16)],
                         ids=["4x4", "4x8", "8x4", "4x16", "4x2-16bit"])
def test_every_policy_matches_numpy(cfg):
    rng = np.random.default_rng(1)
    for bp in sorted({bp for bp, _ in cfg.policies}):
        groups = []
        # one-cycle groups right after others: a group's first cycle must not add the last one's sums
        for n in (1, 3, 1, 2, 1):
            groups.append([(rng.integers(cfg.data_min, cfg.data_max + 1, (cfg.tc, cfg.tp)),
                            rng.integers(cfg.data_min, cfg.data_max + 1, (cfg.tc, cfg.tp))) for _ in range(n)])
        # extreme operands: -128 * -128 on every lane
        ext = np.full((cfg.tc, cfg.tp), cfg.data_min)
        groups.append([(ext, ext)] * 2)
        dut, got = run_groups(cfg, groups, bp)
        assert [t for _, t, _ in got] == list(range(len(groups))), bp
        for gi, (_, _, vals) in enumerate(got):
            exp = group_sums(cfg, [x for x, _ in groups[gi]], [w for _, w in groups[gi]], bp)
            for i in range(bp):
                for pe in range(cfg.tc):
                    assert vals[i * cfg.tc + pe] == exp[i * cfg.tc + pe], (bp, gi, i, pe)
        # back-to-back groups: each group's sums appear latency cycles after its last input
        last_in = np.cumsum([len(g) for g in groups]) - 1
        assert [c for c, _, _ in got] == [int(li) + dut.latency - 1 for li in last_in]


def test_wrong_model_is_caught():
    cfg = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
    rng = np.random.default_rng(2)
    g = [(rng.integers(-128, 128, (4, 4)), rng.integers(-128, 128, (4, 4)))]
    _, got = run_groups(cfg, [g], 2)
    exp = group_sums(cfg, [g[0][0]], [g[0][1]], 2)
    exp_wrong = group_sums(cfg, [g[0][0]], [g[0][1]], 1)  # a different split
    assert got[0][2][0] == exp[0]
    assert got[0][2][0] != exp_wrong[0] or got[0][2][1] != exp_wrong[1]


@pytest.mark.parametrize("kw, name", [({"tag_width": 0}, "tag_width = 0"),
                                      ({"valid_copies": 0}, "valid_copies = 0"),
                                      ({"valid_copies": True}, "valid_copies = True")])
def test_bad_arguments_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        PEArray(HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4), **kw)
