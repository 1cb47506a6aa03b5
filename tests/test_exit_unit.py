"""The FBE's exit unit alone, in the Amaranth simulator with a Python memory: top-1, its
class, top-2, the exit test at its boundary and the copy of an exiting sample's logits
(the whole FBE is checked on the RTL in test_fbe.py; this is the fast, exact check of the
unit's arithmetic, ties and partly filled beats included)."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.exit_unit import ExitUnit
from fluidnpu.hw.fbe_layout import CRIT_MARGIN, CRIT_MAX

INT32_MIN = -(1 << 31)
#: one logit per 4-byte beat; two per 8-byte beat (an odd count leaves half a beat of padding)
CFGS = {"m4": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, max_classes=8),
        "m8": HwConfig(tc=8, tp=8, mem_bytes=8, max_classes=9)}
LOGITS, RESULT = 0x100, 0x400


def expected(logits, crit, thr, final):
    """The exit test of sim/network.py's reference: top-1 (first index on ties), top-2
    (equal maxima: top-2 = top-1), margin or max criterion, the final head always exits."""
    s = sorted(logits)
    top1, top2 = s[-1], (s[-2] if len(s) > 1 else INT32_MIN)
    passes = (top1 >= thr) if crit == CRIT_MAX else (top1 - top2 >= thr)
    return {"cls": logits.index(top1), "top1": top1, "top2": top2, "exited": bool(final or passes)}


def run_unit(cfg, cases, latency=3, res_late=0):
    """Run ``cases`` ((logits, crit, thr, final, padding)) through one ExitUnit, one after
    the other; return per case the outputs and the words written to the result area.
    ``res_late``: ``res_addr`` is another address at ``start`` and becomes the result area
    that many cycles later (the FBE's comes from registers that settle after ``start``)."""
    dut = ExitUnit(cfg)
    M = cfg.mem_bytes
    got = []

    async def tb(ctx):
        for logits, crit, thr, final, pad in cases:
            mem = {}
            words = list(logits) + [pad] * (-len(logits) % (M // 4))     # the beat's unused logit
            for i, v in enumerate(words):
                mem[LOGITS + 4 * i] = v
            ctx.set(dut.addr, LOGITS)
            ctx.set(dut.c, len(logits))
            ctx.set(dut.crit, crit)
            ctx.set(dut.thr, thr)
            ctx.set(dut.final, final)
            ctx.set(dut.res_addr, RESULT ^ 0x2000 if res_late else RESULT)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            reads, writes, acks = [], {}, []
            for cyc in range(400):
                if res_late and cyc + 1 == res_late:
                    ctx.set(dut.res_addr, RESULT)
                ctx.set(dut.mem.rd_req.ready, 1)
                ctx.set(dut.mem.wr_req.ready, 1)
                # responses and acknowledgements ``latency`` cycles after their request
                resp = [a for t, a in reads if t == 0]
                ctx.set(dut.mem.rd_resp.valid, bool(resp))
                if resp:
                    beat = sum((mem.get(resp[0] + 4 * w, 0) & 0xFFFFFFFF) << (32 * w) for w in range(M // 4))
                    ctx.set(dut.mem.rd_resp.payload, beat)
                ctx.set(dut.mem.wr_resp.valid, any(t == 0 for t in acks))
                if ctx.get(dut.done):
                    got.append(({k: ctx.get(getattr(dut, k)) for k in ("cls", "top1", "top2", "exited")},
                                writes))
                    await ctx.tick()
                    break
                if ctx.get(dut.mem.rd_req.valid):
                    reads.append((latency, ctx.get(dut.mem.rd_req.payload)))
                if ctx.get(dut.mem.wr_req.valid):
                    w = ctx.get(dut.mem.wr_req.payload)
                    assert w.strb == (1 << M) - 1
                    for k in range(M // 4):
                        v = (w.data >> (32 * k)) & 0xFFFFFFFF
                        writes[w.addr + 4 * k] = v - (1 << 32) if v >> 31 else v
                    acks.append(latency)
                await ctx.tick()
                reads = [(t - 1, a) for t, a in reads if t > 0]
                acks = [t - 1 for t in acks if t > 0]
            else:
                raise AssertionError("the exit unit never finished")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


def _cases(cfg, rng):
    c_max = cfg.max_classes
    cases = []
    for c in (1, 2, 3, c_max):
        for crit in (CRIT_MARGIN, CRIT_MAX):
            logits = [int(v) for v in rng.integers(-1000, 1000, c)]
            cases.append((logits, crit, int(rng.integers(-50, 300)), False, 0))
    # ties: equal maxima give a zero margin and the first index
    cases.append(([5, 9, 9, -3][:min(4, c_max)], CRIT_MARGIN, 0, False, 0))
    cases.append(([9, 9, 1][:min(3, c_max)], CRIT_MARGIN, 1, False, 0))
    cases.append(([-7, 4, 4, 4, 2][:c_max], CRIT_MAX, 4, False, 0))
    # the thresholds exactly at the boundary: margin == thr and top1 == thr exit
    cases.append(([10, 30, 25], CRIT_MARGIN, 5, False, 0))
    cases.append(([10, 30, 25], CRIT_MARGIN, 6, False, 0))
    cases.append(([10, 30, 25], CRIT_MAX, 30, False, 0))
    cases.append(([10, 30, 25], CRIT_MAX, 31, False, 0))
    # int32 extremes; the final head exits whatever the test says
    cases.append(([INT32_MIN, (1 << 31) - 1, 0], CRIT_MARGIN, (1 << 31) - 1, False, 0))
    cases.append(([INT32_MIN] * 2, CRIT_MAX, (1 << 31) - 1, True, 0))
    # a large value in the padding of the last beat must not count
    cases.append(([3, 1, 2], CRIT_MARGIN, 1, False, (1 << 31) - 1))
    return cases


@pytest.mark.parametrize("name", list(CFGS))
def test_exit_unit_top2_threshold_and_copy(name):
    cfg = CFGS[name]
    cases = _cases(cfg, np.random.default_rng(7))
    got = run_unit(cfg, cases)
    assert len(got) == len(cases)
    for (logits, crit, thr, final, _), (out, writes) in zip(cases, got):
        want = expected(logits, crit, thr, final)
        assert out == want, (logits, crit, thr, final, out)
        copied = [writes[a] for a in sorted(writes)]
        n = len(logits) + (-len(logits) % (cfg.mem_bytes // 4))
        # an exiting sample's logits (whole beats) go to its result area; nothing otherwise
        assert copied == (logits + copied[len(logits):] if want["exited"] else []), (logits, copied)
        assert len(copied) == (n if want["exited"] else 0)
        assert all(RESULT <= a < RESULT + 4 * n for a in writes)


@pytest.mark.parametrize("latency", [1, 2])
def test_result_address_is_taken_when_the_sample_exits(latency):
    """``res_addr`` may settle after ``start`` (the FBE's is two registers from the sample
    index): with responses as early as the cycle after their request, an address that
    becomes the result area two cycles after ``start`` is where the logits go (three is
    the most the unit allows; taken at ``start``, they would go to the first address)."""
    cfg = CFGS["m8"]
    cases = [([4, 9, 1], CRIT_MARGIN, 0, False, 0), ([2, 2], CRIT_MAX, 5, True, 0)]
    got = run_unit(cfg, cases, latency=latency, res_late=2)
    for (logits, *_), (out, writes) in zip(cases, got):
        assert out["exited"] and sorted(writes) == [RESULT + 4 * i for i in range(len(writes))]
        assert [writes[a] for a in sorted(writes)][:len(logits)] == logits
