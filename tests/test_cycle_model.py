"""The cycle model (fluidnpu.sim.cycle_model) against the RTL, and its own properties.

RTL tests (``@pytest.mark.rtl``) run random layers through ``run_gemms`` (one simulator
launch per configuration and memory set; Verilator when it builds, else Icarus: both
give the same cycles) and require the model's cycle count to equal the bench's exactly.
Case sets are kept under a cycle budget (predicted by the model itself) so that the file
runs in a few minutes with warm simulator builds.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.gemm_runner import GemmCase, check_gemm_run, run_gemms
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.runner import MemTiming, SimError, build_core
from fluidnpu.sim.cycle_model import (CycleModelError, LayerTiming, layer_cycles,
                                      layer_timing)
from fluidnpu.sim.traffic import tiled_traffic

sys.path.insert(0, str(Path(__file__).parent))
import configs  # noqa: E402

BIG = HwConfig(tc=8, tp=8, mem_bytes=8)     # the 8 x 8 core, the default since 5 Dec 2026
# the shallowest stage FIFO (2, the default until 3 Dec 2026): the most credit stalls, so the RTL
# tests below keep the credit-limited regime covered beside the default's 8 entries
SMALL = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, stage_entries=2)
#: X resident across the column tiles while W is chunked (tests/configs.py), with a deeper
#: stage FIFO (more groups in flight) of a depth that is not a power of two. (One
#: configuration for both: one simulator build fewer in the suite.)
RESIDENT = dataclasses.replace(configs.RESIDENT, stage_entries=5)
SMALL_S5 = RESIDENT
# sixteen PEs: the X copy network's four levels in two stages
WIDE16 = HwConfig(tc=16, tp=4, tr=8, x_buf_elems=2048, w_buf_elems=1024, mem_bytes=4)
#: small buffers with tr = 32 > tr_min = 8: tall row tiles of 16 and 8 rows for P in (64, 256]
TALL = HwConfig(tc=4, tp=4, tr=32, x_buf_elems=2048, w_buf_elems=1024, mem_bytes=4)
#: the 8 x 4, the default from 4 to 5 Dec 2026
MID = HwConfig(tc=8, tp=4, mem_bytes=4)
#: beats wider than a PE's lanes (docs/architecture.md, "Buffers"): W words of two lines
#: (the 16 x 8 with 16-byte beats takes the same) and of four lines (two line-select levels)
NARROW2 = HwConfig(tc=4, tp=2, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, stage_entries=3)
NARROW4 = HwConfig(tc=8, tp=2, tr=8, x_buf_elems=2048, w_buf_elems=1024, mem_bytes=8)
CFGS = {"8x8": BIG, "small": SMALL, "small-s5": SMALL_S5, "16x4": WIDE16, "tall": TALL, "8x4": MID,
        "4x2": NARROW2, "8x2": NARROW4, "resident": RESIDENT}

BASIC_MEMS = (MemTiming(latency=1), MemTiming(latency=20), MemTiming(latency=50),
              MemTiming(latency=1, interval=2), MemTiming(latency=20, interval=2))
ODD_MEMS = (MemTiming(latency=3, interval=3, wr_latency=7),
            MemTiming(latency=9, depth=3, wr_depth=2),
            MemTiming(latency=40, interval=2, depth=5, wr_latency=2, wr_depth=1),
            MemTiming(latency=2, wr_latency=30),
            MemTiming(latency=60, wr_latency=50, wr_depth=10))


def _model(cfg, s) -> int:
    return layer_cycles(cfg, s["R"], s["P"], s["C"], bp=s["bp"], k=s["k"], bias=s["bias"],
                        out_mode=s["out_mode"], mem=s["mem"])


def _shape(cfg, rng, kind, k):
    tr, tp, tc = cfg.tr, cfg.tp, cfg.tc
    F = tc // k
    cm = cfg.chunk_max(k)
    r = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    if kind == "tiny":          # everything below one tile: R < tr, P < tp, C < tc
        return r(1, tr), r(1, tp), r(1, tc)
    if kind == "r1":            # a dense layer for one sample
        return 1, r(1, 4 * tp * tc), r(1, 3 * F)
    if kind == "ragged":        # non-multiples of every tile
        return r(1, 3 * tr), r(1, 3 * tp * tc), r(1, 3 * F)
    if kind == "chunks":        # several reduction chunks
        return r(1, tr + 3), r(cm + 1, 2 * cm + tp), r(1, F + 2)
    if kind == "balanced":      # 2 to 4 chunks, the last two balanced (HwConfig.chunk_sizes)
        if not cfg.chunk_balances(k):
            return None
        return r(1, tr + 3), r(1, 3) * cm + r(1, cm // 2 - 1), r(1, F + 2)
    if kind == "wreuse":        # one column tile, one chunk, several row tiles
        return r(2 * tr + 1, 5 * tr), r(1, min(cm, 3 * tp * k)), r(1, F)
    if kind == "wide":          # many column tiles
        return r(1, tr), r(1, 2 * tp), r(4 * F, 8 * F)
    if kind == "many":          # many row and column tiles: the extrapolation at work
        return r(8 * tr, 14 * tr), r(1, 2 * tp), r(3 * F, 5 * F)
    if kind == "tail":          # the last two row tiles balanced (HwConfig.row_tile_sizes)
        P = r(1, 3 * tp) if rng.random() < 0.6 else r(1, cm)
        T = cfg.tile_rows(P, k)
        if T < 4:
            return None
        return r(1, 4) * T + r(1, T // 2 - 1), P, r(1, 2 * F + 1)
    if kind == "resident":      # chunked W, X resident (HwConfig.x_resident); None if k has none
        wl = cfg.w_buf_elems // tc * k
        hi = min(cfg.x_buf_elems // cfg.tr_min, 4 * wl)
        if hi <= wl:
            return None
        P = r(wl + 1, hi)
        return r(1, 3 * cfg.tile_rows(P, k)), P, r(1, 3 * F)
    if kind == "tall":          # tall row tiles (fewer rows, one chunk); None if k has none
        lo = cfg.x_buf_elems // tr + 1
        hi = min(cfg.x_buf_elems // cfg.tr_min, cfg.w_buf_elems // tc * k)
        if lo > hi:
            return None
        P = r(lo, hi)
        return r(1, 3 * cfg.tile_rows(P, k)), P, r(1, 2 * F + 1)
    raise ValueError(kind)


def _cases(cfg, seed, mems, kinds, budget, max_cases, max_cycles):
    """Random cases whose predicted cycles stay under ``max_cycles`` each and ``budget``
    in total."""
    rng = np.random.default_rng(seed)
    out, total, tries = [], 0, 0
    while len(out) < max_cases and tries < 20 * max_cases:
        tries += 1
        kind = kinds[len(out) % len(kinds)]
        bp = int(rng.choice(cfg.bp_choices))
        k = int(rng.choice(cfg.k_choices))
        shape = _shape(cfg, rng, kind, k)
        if shape is None:
            continue
        R, P, C = shape
        s = dict(R=R, P=P, C=C, bp=bp, k=k, bias=bool(rng.random() < 0.5),
                 out_mode=OUT_REQUANT if rng.random() < 0.5 else OUT_RAW,
                 mem=mems[len(out) % len(mems)], kind=kind, seed=int(rng.integers(1 << 30)))
        cyc = _model(cfg, s)
        if cyc > max_cycles or total + cyc > budget:
            continue
        total += cyc
        out.append(s)
    return out


@functools.lru_cache(maxsize=None)
def _simulator(cfg: HwConfig) -> str:
    """Verilator if its build works, else Icarus (both give the same cycle counts)."""
    try:
        build_core(cfg, "verilator")
        return "verilator"
    except SimError:
        build_core(cfg, "icarus")
        return "icarus"


def _rtl_cycles(cfg, specs, run_dir, sim=None):
    """The RTL runs of ``specs`` (errors in ``GemmRun.error``) and their cases."""
    cases = []
    for s in specs:
        rng = np.random.default_rng(s["seed"])
        x = rng.integers(-3, 4, (s["R"], s["P"]))
        w = rng.integers(-3, 4, (s["P"], s["C"]))
        b = rng.integers(-100, 100, s["C"]) if s["bias"] else None
        cases.append(GemmCase(x=x, w=w, bias=b, out_mode=s["out_mode"], mult=3, shift=2,
                              bp=s["bp"], k=s["k"], mem=s["mem"],
                              name=f"{s['kind']} R,P,C={s['R']},{s['P']},{s['C']}"))
    return run_gemms(cfg, cases, sim=sim or _simulator(cfg), check=False, run_dir=run_dir), cases


def _compare(cfg, specs, run_dir, sim=None):
    assert specs, "no cases generated"
    runs, cases = _rtl_cycles(cfg, specs, run_dir, sim)
    bad = []
    for s, run, c in zip(specs, runs, cases):
        want = _model(cfg, s)
        if run.error is None:
            # bit-exact too: the same cycles with wrong sums would be no proof
            try:
                check_gemm_run(run, gemm_reference(cfg, c.x, c.w, c.bias, out_mode=c.out_mode,
                                                   mult=c.mult, shift=c.shift))
            except AssertionError as e:
                bad.append(f"{s['kind']} R,P,C={s['R']},{s['P']},{s['C']} bp={s['bp']} "
                           f"k={s['k']}: {str(e)[:300]}")
        tr = tiled_traffic(cfg, s["R"], s["P"], s["C"], bp=s["bp"], k=s["k"], bias=s["bias"],
                           out_mode=s["out_mode"])
        moved = (run.mem_stats.get("reads"), run.mem_stats.get("writes"))
        if run.error is None and moved != (tr.read_beats, tr.write_beats):
            bad.append(f"{s['kind']} R,P,C={s['R']},{s['P']},{s['C']} bp={s['bp']} k={s['k']} "
                       f"bias={s['bias']} out_mode={s['out_mode']}: RTL moved (reads, writes) "
                       f"{moved}, tiled_traffic {(tr.read_beats, tr.write_beats)}")
        if run.error is not None or run.cycles != want:
            bad.append(f"{s['kind']} R,P,C={s['R']},{s['P']},{s['C']} bp={s['bp']} k={s['k']} "
                       f"bias={s['bias']} out_mode={s['out_mode']} {s['mem']}: RTL "
                       f"{run.cycles} model {want}" + (f" ({run.error[:200]})" if run.error else ""))
    assert not bad, f"{len(bad)} of {len(specs)} cases differ:\n" + "\n".join(bad)


ALL_KINDS = ("tiny", "r1", "ragged", "chunks", "wreuse", "wide", "balanced")


@pytest.mark.rtl
@pytest.mark.parametrize("cfg_name, seed, mems, kinds, budget, n, max_cyc", [
    ("small", 1, BASIC_MEMS, ALL_KINDS, 110_000, 60, 6_000),
    ("small", 2, ODD_MEMS, ALL_KINDS, 60_000, 30, 6_000),
    ("small", 3, BASIC_MEMS[:3], ("many",), 60_000, 4, 20_000),
    ("small-s5", 8, BASIC_MEMS, ALL_KINDS, 60_000, 30, 6_000),
    ("8x8", 4, BASIC_MEMS, ALL_KINDS, 110_000, 40, 8_000),
    ("8x8", 5, ODD_MEMS, ("tiny", "r1", "ragged", "wide"), 40_000, 15, 8_000),
    ("8x8", 6, BASIC_MEMS[1:2], ("many",), 40_000, 2, 25_000),
    ("16x4", 9, BASIC_MEMS[:3], ALL_KINDS, 60_000, 30, 6_000),
    ("tall", 10, BASIC_MEMS, ("tall", "tall", "chunks", "ragged"), 90_000, 40, 6_000),
    ("tall", 11, ODD_MEMS, ("tall",), 40_000, 15, 6_000),
    ("8x8", 12, BASIC_MEMS[:3], ("tall",), 60_000, 6, 25_000),
    ("8x4", 13, BASIC_MEMS, ("tall",), 160_000, 8, 40_000),
    ("small", 14, BASIC_MEMS + ODD_MEMS, ("tail",), 40_000, 20, 4_000),
    ("tall", 15, BASIC_MEMS, ("tail", "tall"), 40_000, 12, 6_000),
    ("8x8", 16, BASIC_MEMS[:3], ("tail",), 40_000, 8, 8_000),
    ("4x2", 17, BASIC_MEMS + ODD_MEMS, ALL_KINDS, 30_000, 20, 4_000),
    ("8x2", 18, BASIC_MEMS[:3], ALL_KINDS + ("tall", "tail"), 30_000, 16, 5_000),
    ("resident", 19, BASIC_MEMS + ODD_MEMS, ("resident", "resident", "chunks", "balanced", "ragged",
                                             "wide"), 60_000, 30, 6_000),
    ("8x8", 20, BASIC_MEMS[:3], ("resident",), 60_000, 3, 25_000),
], ids=["small-basic", "small-odd", "small-many", "small-s5", "8x8-basic", "8x8-odd",
        "8x8-many", "16x4-basic", "tall-basic", "tall-odd", "8x8-tall", "8x4-tall",
        "small-tail", "tall-tail", "8x8-tail", "4x2-wide-beat", "8x2-wide-beat",
        "resident", "8x8-resident"])
def test_model_equals_rtl(cfg_name, seed, mems, kinds, budget, n, max_cyc, tmp_path):
    cfg = CFGS[cfg_name]
    _compare(cfg, _cases(cfg, seed, mems, kinds, budget, n, max_cyc), tmp_path)


@pytest.mark.rtl
def test_model_equals_rtl_on_icarus(tmp_path):
    """The same proof on the other simulator (fewer, shorter cases: Icarus is slower)."""
    cfg = CFGS["small"]
    _compare(cfg, _cases(cfg, 7, BASIC_MEMS[:2], ("tiny", "r1", "ragged", "chunks"), 40_000, 30, 4_000),
             tmp_path, sim="icarus")


# -- pure Python ---------------------------------------------------------------------------

def test_constants_match_rtl():
    from fluidnpu.hw.buffers import OperandBuffers
    from fluidnpu.hw.core import NPUCore
    from fluidnpu.hw.drain import Drain
    from fluidnpu.hw.loader import Loader
    from fluidnpu.hw.pe_array import PEArray
    from fluidnpu.hw.row_stage import RowStage
    from fluidnpu.sim import cycle_model as cm
    # the 8-lane adder tree takes three stages, the 4-lane two
    assert BIG == HwConfig()                # the 8 x 8 runs below are the default's
    assert [cm.pipe_latency(HwConfig(tc=4, tp=4, mem_bytes=4)), cm.pipe_latency(MID),
            cm.pipe_latency(BIG)] == [12, 14, 15]
    for cfg in [*CFGS.values(), HwConfig(), HwConfig(tc=16, tp=4, mem_bytes=4), HwConfig(tc=4, tp=16, mem_bytes=4)]:
        assert cm.START_CYCLES == NPUCore.START_CYCLES + 1
        assert cm.pipe_latency(cfg) == NPUCore.pipe_latency_for(cfg)
        assert cm.pipe_latency(cfg) == (OperandBuffers.latency_for(cfg) + PEArray.latency_for(cfg)
                                        + RowStage.stack_stages(cfg))
        assert cm.buf_latency(cfg) == OperandBuffers.latency_for(cfg)
        assert PEArray.latency_for(cfg) == 4 + cfg.tp.bit_length() - 1
        assert RowStage.stack_stages(cfg) == cfg.tc.bit_length() - 1
        assert cm.DRAIN_LATENCY == Drain.LATENCY
        # response -> r1 -> r2 -> the write beat leaves the loader -> the buffers' write stages
        assert Loader.DECODE_STAGES == 3
        assert cm.DONE_DELAY == Loader.DECODE_STAGES + OperandBuffers.WRITE_STAGES
        for mode in (OUT_RAW, OUT_REQUANT):
            for nrows in (1, cfg.tp):
                for ncols in (1, cfg.tc - 1, cfg.tc):
                    dw = cfg.mem_bytes // (4 if mode == OUT_RAW else cfg.elem_bytes)
                    assert Drain.beats(cfg, mode, nrows, ncols) == nrows * -(-ncols // dw)


def test_worked_example():
    # docs/cycle_model.md, "Worked example" (the RTL measures 79: test below; 77 before the
    # row stage's two read cycles in front of the drain (6 Dec 2026), 76 before the
    # write side's memory-hit stage, 75 before the drain's placement took two stages, 73
    # before the PE array's product register, 72 before the loader's index stage)
    assert layer_cycles(SMALL, 3, 5, 2, bp=1, k=1, bias=False, out_mode=OUT_RAW,
                        mem=MemTiming(latency=5)) == 79


@pytest.mark.rtl
def test_worked_example_on_rtl(tmp_path):
    spec = dict(seed=0, R=3, P=5, C=2, bias=False, out_mode=OUT_RAW, bp=1, k=1,
                mem=MemTiming(latency=5), kind="worked")
    (run,), _ = _rtl_cycles(SMALL, [spec], tmp_path)
    assert run.error is None and run.cycles == 79


def _random_layers(seed, n, big=False):
    rng = np.random.default_rng(seed)
    for i in range(n):
        cfg = (BIG, SMALL)[i % 2]
        bp = int(rng.choice(cfg.bp_choices))
        k = int(rng.choice(cfg.k_choices))
        f = 30 if big else 4
        R = int(rng.integers(1, f * cfg.tr))
        P = int(rng.integers(1, 3 * cfg.chunk_max(k)) if rng.random() < 0.6 else rng.integers(1, 60))
        C = int(rng.integers(1, f * cfg.tc // k + 2))
        mem = (BASIC_MEMS + ODD_MEMS)[int(rng.integers(len(BASIC_MEMS) + len(ODD_MEMS)))]
        yield cfg, R, P, C, dict(bp=bp, k=k, bias=bool(rng.random() < 0.5),
                                 out_mode=int(rng.random() < 0.5), mem=mem)


def test_extrapolation_equals_full_simulation():
    n_skipped = 0
    for cfg, R, P, C, kw in _random_layers(7, 120, big=True):
        a = layer_timing(cfg, R, P, C, **kw)
        b = layer_timing(cfg, R, P, C, extrapolate=False, **kw)
        assert b.simulated_steps == b.steps
        assert (a.cycles, a.load_stall, a.credit_stall, a.tail) == \
            (b.cycles, b.load_stall, b.credit_stall, b.tail), (R, P, C, kw)
        n_skipped += a.steps - a.simulated_steps
    assert n_skipped > 0


@pytest.mark.parametrize("R, P, C, bp, k", [
    (16 * 200 + 5, 147, 64, 1, 1),      # many row tiles, several column tiles
    (16 * 90, 64, 8, 2, 1),             # one column tile: W loaded once
    (16 * 40 + 3, 2500, 24, 1, 8),      # chunks x column tiles x row tiles
    (32 * 40 + 9, 27, 600, 4, 2),       # 150 column tiles: X in parts, periods inside a row tile
    (12544, 27, 32, 8, 2),              # the first layer of bench_gemm at (8, 2): X in parts
    (49 * 3, 4608, 512, 1, 1),          # ResNet-18's conv5_x at batch 3: X resident, 2 chunks
    (16 * 20 + 3, 5000, 40, 2, 1),      # X resident, balanced chunks, a short last column tile
])
def test_extrapolation_on_long_layers(R, P, C, bp, k):
    for mem in (MemTiming(), MemTiming(latency=1), MemTiming(latency=20, interval=2),
                MemTiming(latency=40, wr_depth=4)):
        kw = dict(bp=bp, k=k, bias=True, out_mode=OUT_REQUANT, mem=mem)
        a = layer_timing(BIG, R, P, C, **kw)
        b = layer_timing(BIG, R, P, C, extrapolate=False, **kw)
        assert a.cycles == b.cycles
        assert a.simulated_steps < a.steps


def test_breakdown_and_bounds():
    for cfg, R, P, C, kw in _random_layers(8, 150):
        t = layer_timing(cfg, R, P, C, **kw)
        assert isinstance(t, LayerTiming)
        assert t.cycles == (t.startup + t.setup_cycles + t.issue_cycles + t.load_stall
                            + t.credit_stall + t.tail)
        assert min(t.load_stall, t.credit_stall, t.tail) >= 0
        assert 0 < t.utilisation <= 1
        assert t.macs == R * P * C
        assert t.cycles == layer_cycles(cfg, R, P, C, **kw)
        # the loads of the first step alone: at least one read per beat, plus latency
        assert t.cycles > kw["mem"].latency + t.issue_cycles


def test_deeper_stage_fifo():
    """More groups in flight never cost a cycle, and short groups stop waiting for credits."""
    for cfg, R, P, C, kw in _random_layers(11, 60):
        a = layer_timing(cfg, R, P, C, **kw)
        b = layer_timing(cfg.replace(stage_entries=16), R, P, C, **kw)
        assert b.cycles <= a.cycles and b.credit_stall <= a.credit_stall, (R, P, C, kw)
    # one-cycle groups (P of one step per chunk) wait for the drain with two credits
    kw = dict(bp=1, k=1, bias=False, out_mode=OUT_RAW, mem=MemTiming(latency=1))
    a = layer_timing(BIG.replace(stage_entries=2), 256, 8, 64, **kw)
    b = layer_timing(BIG.replace(stage_entries=16), 256, 8, 64, **kw)
    assert a.credit_stall > 0 and b.credit_stall < a.credit_stall and b.cycles < a.cycles


def test_monotonic_in_memory_timing():
    for cfg, R, P, C, kw in _random_layers(9, 60):
        kw = dict(kw)
        base = kw.pop("mem")
        prev = None
        for lat in (1, 2, 5, 20, 31, 32, 40, 64):
            c = layer_cycles(cfg, R, P, C, mem=MemTiming(latency=lat), **kw)
            assert prev is None or c >= prev, (R, P, C, kw, lat)
            prev = c
        prev = None
        for iv in (1, 2, 3):
            c = layer_cycles(cfg, R, P, C, mem=MemTiming(latency=base.latency, interval=iv), **kw)
            assert prev is None or c >= prev
            prev = c


def test_compute_bound_layer_is_efficient():
    # long reduction, full tiles: stalls are a small share, utilisation near 1
    t = layer_timing(BIG, 16 * 64, 1024, 64, bp=1, k=1, bias=False, out_mode=OUT_RAW)
    assert t.utilisation > 0.9
    assert t.issue_cycles / t.cycles > 0.9


def test_rejects_bad_arguments():
    kw = dict(bp=1, k=1, bias=False, out_mode=OUT_RAW)
    with pytest.raises(CycleModelError, match="backpressure"):
        layer_cycles(SMALL, 4, 4, 4, mem=MemTiming(backpressure=0.1), **kw)
    with pytest.raises(CycleModelError, match="bp"):
        layer_cycles(SMALL, 4, 4, 4, **{**kw, "bp": 3})
    with pytest.raises(CycleModelError, match="k"):
        layer_cycles(SMALL, 4, 4, 4, **{**kw, "k": 8})
    with pytest.raises(CycleModelError, match="R"):
        layer_cycles(SMALL, 0, 4, 4, **kw)
    with pytest.raises(CycleModelError, match="out_mode"):
        layer_cycles(SMALL, 4, 4, 4, **{**kw, "out_mode": 2})
