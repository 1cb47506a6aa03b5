"""The NPU core against the numpy reference, on Icarus and Verilator (cocotb).

Cases are grouped so that each (simulator, configuration, group) is one simulator
launch (``run_gemms``); the build of each (simulator, configuration) is shared through
the build cache. Every case is compared exactly with ``gemm_reference`` and the memory
outside O's elements must be untouched (``check_gemm_run``); a case's cycle count must
not beat the compute of the documented tiling.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.gemm_runner import GemmCase, GemmRun, check_gemm_run, policy_compute_cycles, run_gemm, run_gemms
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.layout import gemm_image
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.runner import MemTiming, SimError

CFGS = {
    "8x8": HwConfig(tc=8, tp=8, mem_bytes=8),     # examples/hw_8x8.toml
    "small": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4),
}
SIMS = ("icarus", "verilator")
# (simulator, configuration) pairs: Icarus on the small core only. Icarus simulates the
# 8 x 8's word-wide operand buffers several times slower than the byte-wide banks before
# them (docs/benchmarks.md, "Simulation speed"); Verilator, compiled, runs it as fast as
# before, so the 8 x 8 keeps its breadth there and Icarus keeps every case on the small one.
SIM_CFGS = [(sim, cfg) for sim in SIMS for cfg in ("8x8", "small") if (sim, cfg) != ("icarus", "8x8")]


def _core_available() -> bool:
    try:
        import fluidnpu.hw.core  # noqa: F401
    except ImportError:
        return False
    return True


needs_core = pytest.mark.skipif(not _core_available(), reason="fluidnpu.hw.core is not there yet")


# -- case generation (deterministic: both simulators run the same cases) -------------------

def _operands(cfg, rng, R, P, C, dist="uniform"):
    lo, hi = cfg.data_min, cfg.data_max
    if dist == "uniform":
        return rng.integers(lo, hi + 1, (R, P)), rng.integers(lo, hi + 1, (P, C))
    if dist == "small":
        return rng.integers(-4, 5, (R, P)), rng.integers(-4, 5, (P, C))
    raise ValueError(dist)


def _requant_params(cfg, x, w, bias, rng):
    """A multiplier and shift that put the outputs around the data range (some saturate)."""
    acc = gemm_reference(cfg, x, w, bias)
    mult = int(rng.integers(1, 1 << (cfg.mult_width - 1))) * int(rng.choice([-1, 1]))
    peak = int(np.abs(acc).max()) * abs(mult)
    shift = max(0, peak.bit_length() - cfg.data_width + int(rng.integers(-1, 3)))
    return mult, min(shift, 63)


def _finish_case(cfg, rng, x, w, *, bp, k, name, mode=None, bias=None, relu=None,
                 with_bias=None, **kw):
    """Random output mode, bias (unless ``with_bias`` decides), ReLU and requantisation."""
    R, P, C = x.shape[0], x.shape[1], w.shape[1]
    if with_bias is None:
        with_bias = bias is not None or rng.random() < 0.5
    if with_bias and bias is None:
        bias = rng.integers(-(1 << 20), 1 << 20, C)
    if not with_bias:
        bias = None
    if mode is None:
        mode = OUT_REQUANT if rng.random() < 0.5 else OUT_RAW
    relu = bool(rng.random() < 0.3) if relu is None else relu
    mult, shift = (1, 0)
    if mode == OUT_REQUANT:
        mult, shift = _requant_params(cfg, x, w, bias, rng)
    return GemmCase(x=x, w=w, bias=bias, out_mode=mode, mult=mult, shift=shift, relu=relu,
                    bp=bp, k=k, name=f"{name} R,P,C={R},{P},{C} bp={bp} k={k}",
                    seed=int(rng.integers(1 << 30)), **kw)


def _shape(cfg, rng, kind, k):
    tr, tp, tc = cfg.tr, cfg.tp, cfg.tc
    F = tc // k
    cm = cfg.chunk_max(k)
    r = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    if kind == "r1":
        return 1, r(1, 3 * tp + 3), r(1, 2 * tc + 3)
    if kind == "p_lt_tp":
        return r(1, tr + 5), r(1, max(1, tp - 1)), r(1, 2 * tc + 1)
    if kind == "c_lt_tc":
        return r(1, 2 * tr + 3), r(tp, 5 * tp), r(1, max(1, tc - 1))
    if kind == "odd":        # non-multiples of tr, tp, tc, F and the beat
        return tr + r(1, tr - 1) if tr > 1 else 3, 3 * tp + r(1, tp - 1) if tp > 1 else 7, \
            F + r(1, max(1, F - 1)) + (1 if F == 1 else 0)
    if kind == "exact":      # exact multiples of the tiles
        return 2 * tr, 4 * tp, 2 * F
    if kind == "chunks":     # P beyond one chunk: 2 or 3 chunks, the last one short
        return r(1, 3), cm + r(1, cm // 4) + (cm if rng.random() < 0.3 else 0), r(1, F + 1)
    raise ValueError(kind)


KINDS = ("r1", "p_lt_tp", "c_lt_tc", "odd", "exact", "chunks")


def policy_cases(cfg_name: str, per_policy: int = 2) -> list[GemmCase]:
    """Random shapes of every kind, spread over every legal (B_P, k)."""
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng(1000 + len(cfg_name))
    kinds = itertools.cycle(KINDS)
    n_chunky = 0
    cases = []
    for bp, k in cfg.policies:
        for _ in range(per_policy):
            kind = next(kinds)
            R, P, C = _shape(cfg, rng, kind, k)
            x, w = _operands(cfg, rng, R, P, C)
            with_bias = None
            if kind == "chunks":          # several chunks with and without bias, alternately
                with_bias = n_chunky % 2 == 0
                n_chunky += 1
            cases.append(_finish_case(cfg, rng, x, w, bp=bp, k=k, name=kind, with_bias=with_bias,
                                      base=int(rng.integers(0, 64)), gap=int(rng.integers(0, 40))))
    return cases


def extreme_cases(cfg_name: str) -> list[GemmCase]:
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng(77)
    lo, hi = cfg.data_min, cfg.data_max
    pol = list(cfg.policies)
    polr = lambda i: pol[i % len(pol)]  # noqa: E731
    cases = []

    def add(name, x, w, i, **kw):
        bp, k = polr(i)
        kw.setdefault("relu", False)
        cases.append(GemmCase(x=np.asarray(x), w=np.asarray(w), bp=bp, k=k,
                              name=f"{name} bp={bp} k={k}", seed=i, **kw))

    R, P, C = cfg.tr + 1, 3 * cfg.tp + 5, cfg.tc + 1
    full = lambda v, s: np.full(s, v, dtype=np.int64)  # noqa: E731
    # -128 x -128 sums (the largest products), and min x max
    add("min*min raw", full(lo, (R, P)), full(lo, (P, C)), 0, out_mode=OUT_RAW)
    add("min*max raw", full(lo, (R, P)), full(hi, (P, C)), 5, out_mode=OUT_RAW)
    add("min*min long P", full(lo, (2, 1100)), full(lo, (1100, 3)), 7, out_mode=OUT_RAW)
    cm = cfg.chunk_max(pol[8 % len(pol)][1])
    add("chunks + bias", full(lo, (3, cm + 3)), full(hi, (cm + 3, 2)), 8, out_mode=OUT_REQUANT,
        mult=7, shift=12, bias=np.array([123456, -654321]))
    # saturation both ways, and a 64-bit product y * mult
    add("sat+", full(hi, (R, P)), full(hi, (P, C)), 1, out_mode=OUT_REQUANT, mult=(1 << 15) - 1)
    add("sat-", full(hi, (R, P)), full(hi, (P, C)), 2, out_mode=OUT_REQUANT, mult=-(1 << 15))
    add("big product", full(lo, (2, 300)), full(lo, (300, 3)), 3, out_mode=OUT_REQUANT,
        mult=-(1 << 15), shift=30)
    add("shift 63", full(lo, (2, 300)), full(lo, (300, 3)), 4, out_mode=OUT_REQUANT,
        mult=-(1 << 15), shift=63)
    # rounding ties (y*mult = (2j+1) * 2**(shift-1)), positive and negative, +-relu
    for i, shift in enumerate((1, 2, 3, 5)):
        x, w = _operands(cfg, rng, R, P, C, "small")
        add(f"ties shift={shift}", x, w, 6 + i, out_mode=OUT_REQUANT, mult=int(rng.integers(1, 4)) *
            (-1 if i % 2 else 1), shift=shift, relu=bool(i == 3))
    # ReLU on raw and requantised outputs with many negative values
    x, w = _operands(cfg, rng, R, P, C)
    add("relu raw", x, w, 10, out_mode=OUT_RAW, relu=True, bias=rng.integers(-5000, 5000, C))
    add("relu requant", x, w, 11, out_mode=OUT_REQUANT, relu=True, mult=3, shift=9)
    # bias at the int32 limits: acc + bias wraps
    b = np.array([(1 << 31) - 1, -(1 << 31)] * C)[:C]
    add("bias wrap", full(hi, (R, P)), full(hi, (P, C)), 12, out_mode=OUT_RAW, bias=b)
    add("bias wrap neg", full(lo, (R, P)), full(hi, (P, C)), 13, out_mode=OUT_RAW, bias=b[::-1].copy())
    add("1x1x1", [[lo]], [[lo]], 14, out_mode=OUT_REQUANT, mult=1, shift=0, bias=np.array([-5]))
    return cases


def backpressure_cases(cfg_name: str) -> list[GemmCase]:
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng(4242)
    timings = [MemTiming(latency=1), MemTiming(latency=40), MemTiming(latency=3, interval=3),
               MemTiming(latency=5, backpressure=0.3, seed=1),
               MemTiming(latency=7, interval=2, backpressure=0.5, seed=2, depth=3, wr_latency=2),
               MemTiming(latency=2, backpressure=0.7, seed=3, wr_latency=30)]
    pol = list(cfg.policies)
    cases = []
    for i, t in enumerate(timings):
        bp, k = pol[(5 * i + 3) % len(pol)]
        kind = ("odd", "chunks", "c_lt_tc", "odd", "chunks", "r1")[i]
        R, P, C = _shape(cfg, rng, kind, k)
        x, w = _operands(cfg, rng, R, P, C)
        cases.append(_finish_case(cfg, rng, x, w, bp=bp, k=k, name=f"{kind} {t}", mem=t))
    return cases


def big_cases() -> list[GemmCase]:
    """(37, 300, 23) under every legal policy of the 8 x 8 configuration."""
    cfg = CFGS["8x8"]
    rng = np.random.default_rng(37)
    x, w = _operands(cfg, rng, 37, 300, 23)
    bias = rng.integers(-(1 << 16), 1 << 16, 23)
    cases = []
    for i, (bp, k) in enumerate(cfg.policies):
        mode = OUT_REQUANT if i % 2 else OUT_RAW
        cases.append(_finish_case(cfg, rng, x, w, bp=bp, k=k, name="37x300x23", mode=mode,
                                  bias=bias if i % 3 else None, relu=bool(i % 4 == 3)))
    return cases


def tail_cases(cfg_name: str) -> list[GemmCase]:
    """Layers whose last row tile has under half a tile of rows, so the last two are
    balanced (``HwConfig.row_tile_sizes``): with the half tile first, in the middle and
    with tall row tiles, over the policies; the row offsets of the half tile must be right."""
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng(4711)
    pol = list(cfg.policies)
    cases = []
    for i, (n_full, deep) in enumerate([(1, False), (2, False), (3, False), (2, True), (1, True)]):
        bp, k = pol[(3 * i + 1) % len(pol)]
        P = int(rng.integers(2, 3 * cfg.tp + 2))
        if deep:    # tall row tiles (fewer than tr rows) where the buffers allow it at this k
            P = min(cfg.x_buf_elems // cfg.tr_min, cfg.w_buf_elems // cfg.tc * k)
        T = cfg.tile_rows(P, k)
        R = n_full * T + int(rng.integers(1, T // 2))
        sizes = cfg.row_tile_sizes(R, T)
        assert len(sizes) == n_full + 1 and sizes[-2] == T // 2, (R, T, sizes)
        C = int(rng.integers(1, 2 * (cfg.tc // k) + 2))
        x, w = _operands(cfg, rng, R, P, C)
        cases.append(_finish_case(cfg, rng, x, w, bp=bp, k=k, name=f"tail {sizes}"))
    return cases


GROUPS = {
    "policies": policy_cases,
    "tails": tail_cases,
    "extremes": extreme_cases,
    "backpressure": backpressure_cases,
}


# -- checking -------------------------------------------------------------------------

def expected(cfg: HwConfig, c: GemmCase) -> np.ndarray:
    return gemm_reference(cfg, c.x, c.w, c.bias, out_mode=c.out_mode, mult=c.mult,
                          shift=c.shift, relu=c.relu)


def check_runs(cfg: HwConfig, cases: list[GemmCase], runs: list[GemmRun]) -> None:
    """Every case exact, nothing else written, cycles plausible; one report for all."""
    problems = []
    for c, r in zip(cases, runs):
        try:
            check_gemm_run(r, expected(cfg, c))
            R, P, C = r.image.R, r.image.P, r.image.C
            floor = policy_compute_cycles(cfg, R, P, C, c.bp, c.k)
            assert r.cycles is not None and r.cycles >= floor, \
                f"{r.cycles} cycles, fewer than the {floor} compute cycles of the tiling"
        except AssertionError as e:
            problems.append(f"{c.name}: {e}")
    assert not problems, f"{len(problems)} of {len(cases)} cases wrong:\n" + "\n".join(problems)


def run_and_check(cfg_name: str, sim: str, cases: list[GemmCase]) -> list[GemmRun]:
    cfg = CFGS[cfg_name]
    runs = run_gemms(cfg, cases, sim=sim, check=False)
    check_runs(cfg, cases, runs)
    return runs


# -- the tests ------------------------------------------------------------------------

@pytest.mark.rtl
@needs_core
@pytest.mark.parametrize("sim, cfg_name", SIM_CFGS)
@pytest.mark.parametrize("group", list(GROUPS))
def test_core_group(sim, cfg_name, group):
    run_and_check(cfg_name, sim, GROUPS[group](cfg_name))


@pytest.mark.rtl
@needs_core
@pytest.mark.parametrize("sim, cfg_name", SIM_CFGS)
def test_core_back_to_back(sim, cfg_name):
    """Layers of different shapes and policies, one after the other without a reset."""
    cases = [c for c in policy_cases(cfg_name, per_policy=1) if not c.name.startswith("chunks")]
    cases = cases[:: max(1, len(cases) // 6)]
    cfg = CFGS[cfg_name]
    runs = run_gemms(cfg, cases, sim=sim, check=False, chain=True, mem=MemTiming(latency=9))
    check_runs(cfg, cases, runs)
    assert all(r.mem is runs[0].mem or (r.mem == runs[0].mem).all() for r in runs)


BIG_PARTS = 4     # the 16 policies in 4 launches, so that xdist can spread them


@pytest.mark.rtl
@needs_core
@pytest.mark.parametrize("part", range(BIG_PARTS))
@pytest.mark.parametrize("sim", [s for s, c in SIM_CFGS if c == "8x8"])
def test_core_37x300x23_every_policy(sim, part):
    cases = big_cases()[part::BIG_PARTS]
    runs = run_and_check("8x8", sim, cases)
    assert len({r.cycles for r in runs}) > 1, "every policy took the same number of cycles"


@pytest.mark.rtl
@needs_core
def test_checker_catches_wrong_results():
    """A wrong output, a stray write, or a wrong reference must all be reported."""
    cfg = CFGS["small"]
    rng = np.random.default_rng(5)
    x, w = _operands(cfg, rng, 5, 9, 6)
    case = GemmCase(x=x, w=w, out_mode=OUT_RAW, bp=2, k=2)
    run = run_gemms(cfg, [case], sim="icarus")[0]
    ref = expected(cfg, case)
    check_gemm_run(run, ref)                        # the real result is right
    im = run.image
    # one corrupted output byte
    bad = GemmRun(**{**run.__dict__, "mem": run.mem.copy()})
    bad.mem[im.o_addr + 2 * im.o_stride + 3 * im.ob] ^= 0x01
    with pytest.raises(AssertionError, match=r"1 of 30 output elements differ: O\[2,3\]"):
        check_gemm_run(bad, ref)
    # a byte outside O's elements written (the last one below O's end)
    bad = GemmRun(**{**run.__dict__, "mem": run.mem.copy()})
    pad = int(np.flatnonzero(~im.out_mask())[-1])
    bad.mem[pad] ^= 0x80
    with pytest.raises(AssertionError, match="outside O's elements"):
        check_gemm_run(bad, ref)
    # a reference with one perturbed weight
    w2 = w.copy()
    w2[4, 1] += 1 if w2[4, 1] < cfg.data_max else -1
    assert (x[:, 4] != 0).any()
    with pytest.raises(AssertionError, match="output elements differ"):
        check_gemm_run(run, gemm_reference(cfg, x, w2))
    # and check_runs turns it into one failure report naming the case
    with pytest.raises(AssertionError, match="1 of 1 cases wrong"):
        check_runs(cfg, [GemmCase(**{**case.__dict__, "w": w2, "name": "perturbed"})], [run])


@pytest.mark.rtl
@needs_core
def test_run_gemm_single_and_wave(tmp_path):
    cfg = CFGS["small"]
    rng = np.random.default_rng(9)
    x, w = _operands(cfg, rng, 3, 7, 5)
    r = run_gemm(cfg, x, w, np.arange(5) - 2, bp=1, k=4, sim="icarus", wave=tmp_path / "w.vcd",
                 mem=MemTiming(latency=3))
    assert (r.out == gemm_reference(cfg, x, w, np.arange(5) - 2)).all()
    assert r.wave == tmp_path / "w.fst" and r.wave.stat().st_size > 0
    assert r.cycles > 0


@pytest.mark.rtl
@pytest.mark.slow
@needs_core
def test_verilator_wave(tmp_path):
    """Verilator traces need their own build (--trace); VCD is written on request."""
    cfg = CFGS["small"]
    rng = np.random.default_rng(10)
    x, w = _operands(cfg, rng, 2, 5, 3)
    r = run_gemm(cfg, x, w, sim="verilator", wave=tmp_path / "v.fst", mem=MemTiming(latency=2))
    assert (r.out == gemm_reference(cfg, x, w)).all()
    assert r.wave == tmp_path / "v.vcd"
    assert r.wave.read_text(errors="replace").startswith("$")


# -- the bench's own checks, against stand-in cores -------------------------------------

def _stub_core(behaviour: str):
    """A component with the core's ports that misbehaves in one way."""
    def factory(cfg):
        from amaranth.hdl import Module, Signal
        from amaranth.lib import stream, wiring
        from amaranth.lib.wiring import In, Out
        from fluidnpu.hw.interface import gather_signature, layer_desc_layout, mem_port_signature

        class Stub(wiring.Component):
            def __init__(self):
                super().__init__({"cmd": In(stream.Signature(layer_desc_layout(cfg))),
                                  "busy": Out(1), "mem": Out(mem_port_signature(cfg)),
                                  "gather": Out(gather_signature(cfg))})

            def elaborate(self, platform):
                m = Module()
                m.d.comb += self.cmd.ready.eq(~self.busy)
                started = Signal()
                with m.If(self.cmd.valid & self.cmd.ready):
                    m.d.sync += started.eq(1)
                    if behaviour == "hang":
                        m.d.sync += self.busy.eq(1)
                if behaviour == "early":
                    # one read, but busy falls before its response arrives
                    with m.If(self.cmd.valid & self.cmd.ready):
                        m.d.sync += self.busy.eq(1)
                    with m.If(self.busy):
                        m.d.comb += self.mem.rd_req.valid.eq(1)
                        with m.If(self.mem.rd_req.ready):
                            m.d.sync += self.busy.eq(0)
                if behaviour == "stray":
                    # writes one full beat over O's row padding (and the elements)
                    with m.If(self.cmd.valid & self.cmd.ready):
                        m.d.sync += self.busy.eq(1)
                    wrote = Signal()
                    with m.If(self.busy & ~wrote):
                        m.d.comb += [self.mem.wr_req.valid.eq(1),
                                     self.mem.wr_req.payload.addr.eq(self.cmd.payload.o_addr),
                                     self.mem.wr_req.payload.strb.eq(-1)]
                        with m.If(self.mem.wr_req.ready):
                            m.d.sync += wrote.eq(1)
                    m.d.comb += self.mem.wr_resp.ready.eq(1)
                    with m.If(self.mem.wr_resp.valid):
                        m.d.sync += self.busy.eq(0)
                return m

        return Stub()
    factory.__qualname__ = f"stub_{behaviour}"
    return factory


@pytest.mark.rtl
@pytest.mark.parametrize("behaviour, needle", [
    ("hang", "timeout: busy still high"),
    ("early", "with memory traffic outstanding"),
    ("never_busy", "busy is 0 in cycle"),
])
def test_bench_detects_misbehaving_core(behaviour, needle, tmp_path):
    cfg = CFGS["small"]
    x = np.ones((1, 2), dtype=np.int64)
    w = np.ones((2, 1), dtype=np.int64)
    runs = run_gemms(cfg, [GemmCase(x=x, w=w)], sim="icarus", core=_stub_core(behaviour),
                     check=False, mem=MemTiming(latency=4), run_dir=tmp_path / "a")
    assert runs[0].error is not None and needle in runs[0].error, runs[0].error
    assert runs[0].run_dir == tmp_path / "a" and (tmp_path / "a" / "sim.log").is_file()
    with pytest.raises(SimError, match=needle):
        run_gemms(cfg, [GemmCase(x=x, w=w)], sim="icarus", core=_stub_core(behaviour),
                  mem=MemTiming(latency=4), run_dir=tmp_path / "b")


@pytest.mark.rtl
def test_bench_detects_stray_write():
    """The stub writes the whole first O beat (elements and row padding)."""
    cfg = CFGS["small"]
    x = np.ones((1, 2), dtype=np.int64)
    w = np.ones((2, 1), dtype=np.int64)
    run = run_gemms(cfg, [GemmCase(x=x, w=w, out_mode=OUT_REQUANT)], sim="icarus",
                    core=_stub_core("stray"), mem=MemTiming(latency=2))[0]
    assert run.error is None
    with pytest.raises(AssertionError, match="outside O's elements"):
        check_gemm_run(run, np.zeros((1, 1), dtype=np.int64))


def test_layout_images_are_self_consistent():
    """Cheap guard without a simulator: every generated case lays out and round-trips."""
    for name in CFGS:
        cfg = CFGS[name]
        for c in policy_cases(name) + extreme_cases(name) + backpressure_cases(name):
            im = gemm_image(cfg, c.x, c.w, c.bias, out_mode=c.out_mode, base=c.base, gap=c.gap)
            ref = expected(cfg, c)
            m = im.mem.copy()
            im.write_out(m, ref)
            assert (im.read_out(m) == ref).all(), c.name
            im.desc(mult=c.mult, shift=c.shift, relu=c.relu, bp=c.bp, k=c.k)
