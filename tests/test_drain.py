"""Drain: bit-exact results against the numpy reference and the exact timing contract."""
from __future__ import annotations

import gc
import random
import warnings
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Fragment, Module, Shape
from amaranth.lib import data
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.drain import Drain, head_layout, stage_layout
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT, layer_desc_layout
from fluidnpu.hw.reference import gemm_reference, wrap
from fluidnpu.hw.row_stage import RowStage

CFG_8X8 = HwConfig(tc=8, tp=8, mem_bytes=8)     # the 8 x 8 core (examples/hw_8x8.toml)
CFG_SMALL = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
CFG_16 = HwConfig(tc=8, tp=8, mem_bytes=8, data_width=16)
# many partial-sum lines per tile row, narrow accumulator, odd multiplier width
CFG_ODD = HwConfig(tc=16, tp=4, tr=4, acc_width=18, mult_width=9, mem_bytes=4, x_buf_elems=256,
                   w_buf_elems=128, dim_width=12, addr_width=20)
CONFIGS = {"default": CFG_8X8, "small": CFG_SMALL, "d16": CFG_16, "odd": CFG_ODD}

SENTINEL = 0xA5
BASE = 0x40          # first O array (an M-aligned address, not 0)


# -- payload packing -------------------------------------------------------------------------

def pack(shape, value) -> int:
    """Bits of ``value`` (ints, lists, dicts) in ``shape``; fast enough for big payloads."""
    if isinstance(shape, data.StructLayout):
        return sum(pack(f.shape, value[name]) << f.offset for name, f in shape)
    if isinstance(shape, data.ArrayLayout):
        w = Shape.cast(shape.elem_shape).width
        return sum(pack(shape.elem_shape, v) << (i * w) for i, v in enumerate(value))
    return int(value) & ((1 << Shape.cast(shape).width) - 1)


# -- stimulus --------------------------------------------------------------------------------

@dataclass
class Layer:
    desc: dict
    R: int
    C: int
    bp: int
    k: int
    n_ch: int
    bias: np.ndarray
    entries: list = field(default_factory=list)
    acc: np.ndarray | None = None

    def expected(self, cfg):
        d = self.desc
        return gemm_reference(cfg, self.acc, np.eye(self.C, dtype=np.int64),
                              self.bias if d["bias_en"] else None, out_mode=d["out_mode"],
                              mult=d["mult"], shift=d["shift"], relu=bool(d["relu"]))


def out_bytes(cfg, out_mode):
    return 4 if out_mode == OUT_RAW else cfg.elem_bytes


def row_stride(cfg, layer):
    M = cfg.mem_bytes
    return -(-layer.C * out_bytes(cfg, layer.desc["out_mode"]) // M) * M


def draw_vals(cfg, rng, style, n, shift=0):
    aw = cfg.acc_width
    lo, hi = -(1 << (aw - 1)), (1 << (aw - 1)) - 1
    if style == "full":
        return [int(v) for v in rng.integers(lo, hi, n, endpoint=True)]
    if style == "small":
        return [int(v) for v in rng.integers(-4096, 4096, n)]
    if style == "extreme":
        return [int(rng.choice([lo, hi, lo + 1, hi - 1, 0, -1, 1])) for _ in range(n)]
    if style == "ties":   # y*1 is an exact tie at this shift
        half = 1 << (shift - 1) if shift else 0
        return [int(rng.integers(-300, 300)) * (1 << shift) + half for _ in range(n)]
    raise ValueError(style)


def make_layer(cfg, rng, o_addr, *, bp=None, k=None, R=None, C=None, n_ch=None, out_mode=None,
               relu=None, bias_en=None, mult=None, shift=None, style=None, bias_style=None):
    """A random layer and its stage entries, in the core's order (rt, ct, ch, g)."""
    bp = bp or int(rng.choice(cfg.bp_choices))
    k = k or int(rng.choice(cfg.k_choices))
    F = cfg.tc // k
    R = R or int(rng.integers(1, min(2 * cfg.tr, 24) + 1))
    C = C or int(rng.integers(1, min(2 * F + 3, 20) + 1))
    n_ch = n_ch or int(rng.choice([1, 1, 2, 3]))
    if out_mode is None:
        out_mode = OUT_REQUANT if rng.random() < 0.6 else OUT_RAW
    relu = int(rng.random() < 0.5) if relu is None else relu
    bias_en = int(rng.random() < 0.6) if bias_en is None else bias_en
    mw = cfg.mult_width
    if mult is None:
        mult = int(rng.integers(-(1 << (mw - 1)), 1 << (mw - 1)))
    if shift is None:
        shift = int(rng.choice([0, 1, 2, int(rng.integers(3, 40)), int(rng.integers(40, 64))]))
    style = style or str(rng.choice(["full", "small", "extreme"]))
    if bias_style == "extreme":
        bias = rng.choice([-(1 << 31), (1 << 31) - 1, 0, -1], C).astype(np.int64)
    else:
        bias = rng.integers(-(1 << 31), 1 << 31, C).astype(np.int64)
    desc = dict(r=R, p=1, c=C, x_addr=0, w_addr=0, b_addr=0, o_addr=o_addr,
                log2_bp=bp.bit_length() - 1, log2_k=k.bit_length() - 1, bias_en=bias_en,
                out_mode=out_mode, relu=relu, mult=mult, shift=shift, rs=0)
    layer = Layer(desc, R, C, bp, k, n_ch, bias)
    acc = np.zeros((R, C), dtype=np.int64)
    n = cfg.tc * cfg.tp
    for rt in range(-(-R // cfg.tr)):
        rows_t = min(cfg.tr, R - rt * cfg.tr)
        for ct in range(-(-C // F)):
            c0 = ct * F
            ncols = min(F, C - c0)
            for ch in range(n_ch):
                for g in range(-(-rows_t // bp)):
                    nrows = min(bp, rows_t - g * bp)
                    vals = draw_vals(cfg, rng, style, n, shift)
                    # the bias is only meaningful on the last chunk (the core loads it then)
                    ebias = [int(v) for v in rng.integers(-(1 << 31), 1 << 31, cfg.tc)]
                    if ch == n_ch - 1:
                        ebias[:ncols] = [int(b) for b in bias[c0:c0 + ncols]]
                    row0 = rt * cfg.tr + g * bp
                    layer.entries.append(dict(vals=vals, bias=ebias, row0=row0, trow0=g * bp,
                                              nrows=nrows, c0=c0, ncols=ncols,
                                              first=int(ch == 0), last=int(ch == n_ch - 1)))
                    for i in range(nrows):
                        for u in range(ncols):
                            acc[row0 + i, c0 + u] += vals[i * cfg.tc + u]
    layer.acc = wrap(acc, cfg.acc_width)
    return layer


def layer_bytes(cfg, layer):
    return layer.R * row_stride(cfg, layer)


def make_layers(cfg, rng, n):
    """``n`` random layers; output mode and chunk count cycle so that every pairing occurs."""
    layers, addr = [], BASE
    for j in range(n):
        layer = make_layer(cfg, rng, addr, out_mode=(OUT_REQUANT, OUT_RAW)[j % 2],
                           n_ch=(1, 2, 3)[j % 3])
        layers.append(layer)
        addr += layer_bytes(cfg, layer) + cfg.mem_bytes * int(rng.integers(1, 3))
    return layers


def place(cfg, layers):
    """Give every layer its own O array (with guard beats between them)."""
    addr = BASE
    for layer in layers:
        layer.desc["o_addr"] = addr
        addr += layer_bytes(cfg, layer) + cfg.mem_bytes
    return layers


def expected_image(cfg, layers, size, expected=None):
    """Memory after the layers: sentinel everywhere except O's elements (padding untouched)."""
    img = bytearray([SENTINEL]) * size
    for n, layer in enumerate(layers):
        z = layer.expected(cfg) if expected is None else expected[n]
        ob = out_bytes(cfg, layer.desc["out_mode"])
        os_ = row_stride(cfg, layer)
        for r in range(layer.R):
            for c in range(layer.C):
                a = layer.desc["o_addr"] + r * os_ + c * ob
                img[a:a + ob] = (int(z[r, c]) & ((1 << (8 * ob)) - 1)).to_bytes(ob, "little")
    return img


def check_write_counts(cfg, layers, count):
    """Every byte of every O element written exactly once, no other byte (padding) at all."""
    want = [0] * len(count)
    for layer in layers:
        ob = out_bytes(cfg, layer.desc["out_mode"])
        for r in range(layer.R):
            a = layer.desc["o_addr"] + r * row_stride(cfg, layer)
            want[a:a + layer.C * ob] = [1] * (layer.C * ob)
    bad = [a for a in range(len(count)) if count[a] != want[a]]
    assert not bad, f"byte {bad[0]:#x} written {count[bad[0]]} times, want {want[bad[0]]}"


def compare_memory(cfg, layers, got, expected=None):
    """Raise AssertionError naming the first wrong byte (layer, row, column or padding)."""
    want = expected_image(cfg, layers, len(got), expected)
    if got == want:
        return
    bad = next(a for a in range(len(got)) if got[a] != want[a])
    where = "outside every O array"
    for n, layer in enumerate(layers):
        o, os_ = layer.desc["o_addr"], row_stride(cfg, layer)
        if o <= bad < o + layer.R * os_:
            r, b = divmod(bad - o, os_)
            c = b // out_bytes(cfg, layer.desc["out_mode"])
            where = f"layer {n} row {r} " + (f"column {c}" if c < layer.C else "padding")
    raise AssertionError(f"byte {bad:#x} ({where}): got {got[bad]:#04x}, want {want[bad]:#04x}")


# -- the contract, as a cycle model ----------------------------------------------------------

class ContractModel:
    """The drain's documented timing: held entry, one beat per cycle, LATENCY, global stall."""

    def __init__(self, cfg, latency=Drain.LATENCY):
        self.cfg = cfg
        self.held = None                # beats still to issue: write address, or None (no write)
        self.pipe = [None] * latency    # per register: None (empty) or ("beat", address|None)

    @staticmethod
    def beats_of(cfg, layer, entry):
        ob = out_bytes(cfg, layer.desc["out_mode"])
        dw = cfg.mem_bytes // ob
        os_ = row_stride(cfg, layer)
        out = []
        for i in range(entry["nrows"]):
            for u0 in range(0, entry["ncols"], dw):
                word = (entry["c0"] + u0) * ob // cfg.mem_bytes * cfg.mem_bytes
                addr = layer.desc["o_addr"] + (entry["row0"] + i) * os_ + word
                out.append(addr if entry["last"] else None)
        assert len(out) == Drain.beats(cfg, layer.desc["out_mode"], entry["nrows"], entry["ncols"])
        return out

    def outputs(self, wr_ready):
        """(stage.ready, wr_req.valid, wr_req.addr, idle) of this cycle."""
        last = self.pipe[-1]
        valid = last is not None and last[1] is not None
        stall = valid and not wr_ready
        ready = not stall and (self.held is None or len(self.held) == 1)
        idle = self.held is None and all(p is None for p in self.pipe)
        return ready, valid, last[1] if valid else None, idle

    def step(self, wr_ready, accepted_beats):
        ready, valid, _, _ = self.outputs(wr_ready)
        if valid and not wr_ready:
            return
        issued = None
        if self.held is not None:
            issued = ("beat", self.held.pop(0))
            if not self.held:
                self.held = None
        self.pipe = [issued] + self.pipe[:-1]
        if accepted_beats is not None:
            assert ready
            self.held = list(accepted_beats)


# -- running the drain ----------------------------------------------------------------------

class DrainTop(Elaboratable):
    """The drain behind the row stage, wired as in the core (hw/core.py): entries are pushed
    into ``stage`` (``w_*``) and leave as writes on ``drain.wr_req``."""

    def __init__(self, cfg):
        self.stage = RowStage(cfg, head=head_layout(cfg))
        self.drain = Drain(cfg)

    def elaborate(self, platform):
        m = Module()
        m.submodules.stage, m.submodules.drain = st, dr = self.stage, self.drain
        m.d.comb += [dr.stage.payload.eq(st.r_data), dr.stage.valid.eq(st.r_rdy),
                     st.r_en.eq(dr.stage.ready), st.rd_en.eq(dr.rd_en),
                     st.rd_addr.eq(dr.rd_addr), st.bias_addr.eq(dr.bias_addr),
                     dr.rd_data.eq(st.rd_data), dr.bias_data.eq(st.bias_data)]
        return m


@dataclass
class Trace:
    accepts: list = field(default_factory=list)    # cycle of each accepted entry
    writes: list = field(default_factory=list)     # cycle of each wr_req transfer
    idle: list = field(default_factory=list)       # idle per cycle
    count: list = field(default_factory=list)      # writes per memory byte
    cycles: int = 0


def run_drain(cfg, layers, *, ready_prob=1.0, valid_prob=1.0, seed=0, mem_size=None,
              tail=Drain.LATENCY + 4, model_latency=Drain.LATENCY):
    """Push the layers' entries into a row stage in front of a Drain (:class:`DrainTop`),
    apply the drain's writes to a byte memory.

    The timing is compared cycle by cycle against :class:`ContractModel`; every byte write
    is counted (each O element byte must be written exactly once, nothing else ever).
    """
    top = DrainTop(cfg)
    dut, st = top.drain, top.stage
    rnd = random.Random(seed)
    ly_layout = layer_desc_layout(cfg)
    hd_layout = head_layout(cfg)
    vals_layout = data.ArrayLayout(Shape(cfg.acc_width, True), cfg.tc * cfg.tp)
    bias_layout = data.ArrayLayout(Shape(32, True), cfg.tc)
    work = [(layer, e) for layer in layers for e in layer.entries]
    if mem_size is None:
        last = layers[-1]
        mem_size = last.desc["o_addr"] + layer_bytes(cfg, last) + 4 * cfg.mem_bytes
    mem = bytearray([SENTINEL]) * mem_size
    count = [0] * mem_size
    trace = Trace()
    model = ContractModel(cfg, model_latency)
    M = cfg.mem_bytes

    async def tb(ctx):
        # loads and pushes into the row stage as the core makes them: at most stage_entries
        # entries between load and accept, an entry of n rows loaded at least n cycles after
        # the one before, pushed stack_stages cycles after its load (k = 1 here: the row
        # stage's stacking tree passes the rows unchanged; test_row_stage.py stacks).
        # Cycle 0 is the first cycle a push can come (the first load is stack_stages before)
        lat = RowStage.stack_stages(cfg)
        pos, acc, next_push, quiet, cycle, stalled = 0, 0, -lat, 0, -lat, None
        readable = []             # cycle from which each pushed entry's head is readable
        tree = deque()            # loaded, not yet pushed: (push cycle, layer, entry)
        while quiet < tail:
            load = (pos < len(work) and cycle >= next_push
                    and pos - acc < cfg.stage_entries and rnd.random() < valid_prob)
            if load:
                layer, entry = work[pos]
                ctx.set(st.w_vals.as_value(), pack(vals_layout, entry["vals"]))
                next_push = cycle + entry["nrows"]
                tree.append((cycle + lat, layer, entry))
                readable.append(cycle + lat + 1)
                pos += 1
            ctx.set(st.ld_rep, load)
            push = bool(tree) and tree[0][0] == cycle
            if push:
                _, layer, entry = tree.popleft()
                beats = Drain.entry_beats_ints(cfg, layer.desc["out_mode"], entry["nrows"],
                                               entry["ncols"])
                ctx.set(st.w_bias.as_value(), pack(bias_layout, entry["bias"]))
                ctx.set(st.w_nrows, entry["nrows"])
                ctx.set(st.w_head.as_value(), pack(hd_layout, {**entry, **beats}))
            ctx.set(st.w_en, push)
            ctx.set(st.w_en_rep, push)
            # the layer of the next entry to be accepted (valid whenever one is accepted)
            if acc < len(work):
                ctx.set(dut.layer.as_value(), pack(ly_layout, work[acc][0].desc))
            wr_ready = rnd.random() < ready_prob
            ctx.set(dut.wr_req.ready, wr_ready)
            s_valid = ctx.get(dut.stage.valid)
            assert s_valid == (acc < len(readable) and readable[acc] <= cycle), (
                f"cycle {cycle}: the row stage's head valid is {s_valid}")
            s_ready = ctx.get(dut.stage.ready)
            w_valid = ctx.get(dut.wr_req.valid)
            idle = ctx.get(dut.idle)
            if cycle >= 0:
                trace.idle.append(idle)
            m_ready, m_valid, m_addr, m_idle = model.outputs(wr_ready)
            got = (s_ready, w_valid, idle)
            assert got == (m_ready, m_valid, m_idle), (
                f"cycle {cycle}: (stage.ready, wr_req.valid, idle) = {got}, "
                f"contract {(m_ready, m_valid, m_idle)}")
            accepted = None
            if s_valid and s_ready:
                trace.accepts.append(cycle)
                accepted = ContractModel.beats_of(cfg, *work[acc])
                acc += 1
            if w_valid:
                payload = ctx.get(dut.wr_req.payload.as_value())
                assert stalled in (None, payload), f"cycle {cycle}: wr_req changed while stalled"
                stalled = None if wr_ready else payload
            if w_valid and wr_ready:
                addr = ctx.get(dut.wr_req.payload.addr)
                wdata = ctx.get(dut.wr_req.payload.data)
                strb = ctx.get(dut.wr_req.payload.strb)
                assert addr == m_addr, f"cycle {cycle}: wr_req.addr {addr:#x}, contract {m_addr:#x}"
                assert addr % M == 0 and strb != 0, f"cycle {cycle}: addr {addr:#x} strb {strb:#x}"
                for b in range(M):
                    if strb >> b & 1:
                        mem[addr + b] = (wdata >> (8 * b)) & 0xFF
                        count[addr + b] += 1
                trace.writes.append(cycle)
            model.step(wr_ready, accepted)
            quiet = quiet + 1 if (acc == len(work) and idle) else 0
            await ctx.tick()
            cycle += 1
        trace.cycles = cycle

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert len(trace.accepts) == len(work), "not every entry was accepted"
    check_write_counts(cfg, layers, count)
    trace.count = count
    return mem, trace


# -- tests -----------------------------------------------------------------------------------

def test_interface():
    cfg = CFG_8X8
    dut = Drain(cfg)
    Fragment.get(dut, None)     # elaborates
    assert Drain.LATENCY == dut.latency == 12
    lay = stage_layout(cfg)
    assert [name for name, _ in lay] == ["vals", "bias", "row0", "trow0", "nrows", "c0", "ncols",
                                          "first", "last", "nb_m1", "row1", "row2",
                                          "last1", "last2"]
    assert [name for name, _ in head_layout(cfg)] == [n for n, _ in lay][2:]
    assert lay["vals"].shape == data.ArrayLayout(Shape(32, True), 64)
    assert lay["bias"].shape == data.ArrayLayout(Shape(32, True), 8)
    assert set(dut.signature.members) == {"layer", "stage", "wr_req", "idle", "rd_en", "rd_addr",
                                          "rd_data", "bias_addr", "bias_data"}
    # rows of (stage_entries + 1) slots of tp rows; the slot travels with the head
    assert dut.rd_addr.shape().width == (17 * 8 - 1).bit_length()
    assert Drain.beats(cfg, OUT_RAW, 3, 5) == 3 * 3       # DW = 8 // 4 = 2
    assert Drain.beats(cfg, OUT_REQUANT, 3, 5) == 3       # DW = 8
    assert Drain.beats(CFG_16, OUT_REQUANT, 2, 8) == 4    # DW = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the half-built object is never elaborated
        with pytest.raises(TypeError):
            Drain({"tc": 8})
        gc.collect()


def test_latency_single_beat():
    """One single-beat entry into an empty drain: accepted the cycle after its push (the
    row stage's head), written LATENCY after its issue."""
    cfg = CFG_8X8
    rng = np.random.default_rng(1)
    [layer] = place(cfg, [make_layer(cfg, rng, 0, bp=1, k=1, R=1, C=3, n_ch=1,
                                   out_mode=OUT_REQUANT)])
    mem, tr = run_drain(cfg, [layer])
    assert tr.accepts == [1]
    assert tr.writes == [1 + 1 + Drain.LATENCY]
    # idle until the accept (the entry waits in the row stage), then busy until the write
    first_idle = next(c for c in range(2, tr.cycles) if tr.idle[c])
    assert tr.idle[0] == tr.idle[1] == 1 and first_idle == tr.writes[-1] + 1
    compare_memory(cfg, [layer], mem)


def test_back_to_back_entries():
    """Entries pushed as soon as allowed: accepted every `beats` cycles, writes with no gaps."""
    cfg = CFG_8X8
    rng = np.random.default_rng(2)
    # raw, R=5 rows, bp=2 -> groups of 2, 2, 1 rows; C=5 (k=1, F=8): 3 beats per row
    [layer] = place(cfg, [make_layer(cfg, rng, 0, bp=2, k=1, R=5, C=5, n_ch=1, out_mode=OUT_RAW)])
    mem, tr = run_drain(cfg, [layer])
    beats = [Drain.beats(cfg, OUT_RAW, e["nrows"], e["ncols"]) for e in layer.entries]
    assert beats == [6, 6, 3]
    assert tr.accepts == [1, 7, 13]
    assert tr.writes == list(range(2 + Drain.LATENCY, 2 + Drain.LATENCY + 15))
    compare_memory(cfg, [layer], mem)


def test_partial_beats_take_cycles():
    """Non-last chunks issue beats (no writes); the last chunk's writes follow without a bubble."""
    cfg = CFG_SMALL
    rng = np.random.default_rng(3)
    # one row, one column, 4 chunks: every entry is one beat on the same partial-sum line
    [layer] = place(cfg, [make_layer(cfg, rng, 0, bp=1, k=4, R=1, C=1, n_ch=4, out_mode=OUT_RAW,
                                   style="full")])
    mem, tr = run_drain(cfg, [layer])
    assert tr.accepts == [1, 2, 3, 4]
    assert tr.writes == [5 + Drain.LATENCY]
    compare_memory(cfg, [layer], mem)


PRESSURE = {"free": {}, "gaps": dict(valid_prob=0.4),
            "backpressure": dict(ready_prob=0.6, valid_prob=0.8),
            "hard-backpressure": dict(ready_prob=0.2)}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pressure", list(PRESSURE))
def test_random_layers(name, pressure):
    """Random layers back to back; timing checked against the contract every cycle."""
    cfg = CONFIGS[name]
    seed = zlib.crc32(f"{name}/{pressure}".encode())
    rng = np.random.default_rng(seed)
    layers = make_layers(cfg, rng, 10)
    mem, tr = run_drain(cfg, layers, seed=seed, **PRESSURE[pressure])
    compare_memory(cfg, layers, mem)
    if pressure == "free":
        # With no stalls and entries pushed as soon as allowed: accepts are back to back
        # from the cycle after the first push (an entry's beats outlast its push spacing).
        work = [(ly, e) for ly in layers for e in ly.entries]
        nbeats = [Drain.beats(cfg, ly.desc["out_mode"], e["nrows"], e["ncols"]) for ly, e in work]
        assert tr.accepts == list(1 + np.cumsum([0] + nbeats[:-1]))
        assert tr.cycles >= sum(nbeats) + Drain.LATENCY


def corner_layers(cfg, rng):
    mw = cfg.mult_width
    mmax, mmin = (1 << (mw - 1)) - 1, -(1 << (mw - 1))
    W = cfg.acc_width + mw
    L = []
    # rounding ties (mult 1, no bias, one chunk), with and without ReLU
    for shift in (1, 2, 5):
        for relu in (0, 1):
            L.append(make_layer(cfg, rng, 0, R=5, C=6, n_ch=1, out_mode=OUT_REQUANT, relu=relu,
                                bias_en=0, mult=1, shift=shift, style="ties"))
    # saturation both ways; extreme accumulators and multipliers
    for mult in (mmax, mmin, -1):
        L.append(make_layer(cfg, rng, 0, R=4, C=5, n_ch=1, out_mode=OUT_REQUANT, relu=0,
                            bias_en=0, mult=mult, shift=0, style="extreme"))
    for shift in (W - 2, W - 1, W, W + 1, 63):
        L.append(make_layer(cfg, rng, 0, R=3, C=4, n_ch=1, out_mode=OUT_REQUANT, relu=0,
                            bias_en=0, mult=int(rng.choice([mmax, mmin])), shift=shift,
                            style="extreme"))
    # wrap-around: multi-chunk sums and bias of extreme values, raw and requant
    L.append(make_layer(cfg, rng, 0, R=6, C=5, n_ch=3, out_mode=OUT_RAW, relu=0, bias_en=1,
                        style="extreme", bias_style="extreme"))
    L.append(make_layer(cfg, rng, 0, R=6, C=5, n_ch=3, out_mode=OUT_RAW, relu=1, bias_en=1,
                        style="full"))
    L.append(make_layer(cfg, rng, 0, R=3, C=3, n_ch=2, out_mode=OUT_REQUANT, relu=0, bias_en=1,
                        mult=mmax, shift=20, style="extreme", bias_style="extreme"))
    # read-after-write on one partial-sum line every cycle (one row, one beat per entry)
    L.append(make_layer(cfg, rng, 0, bp=1, k=cfg.tc, R=1, C=3, n_ch=4, out_mode=OUT_REQUANT,
                        relu=0, bias_en=1, mult=3, shift=4, style="small"))
    return L


@pytest.mark.parametrize("name", list(CONFIGS))
def test_corner_cases(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(7)
    layers = place(cfg, corner_layers(cfg, rng))
    # the corner cases actually happen
    zs = [ly.expected(cfg) for ly in layers]
    req = [z for ly, z in zip(layers, zs) if ly.desc["out_mode"] == OUT_REQUANT]
    assert any((z == cfg.data_max).any() for z in req)
    assert any((z == cfg.data_min).any() for z in req)
    ties = layers[:6]
    assert all(((ly.acc % (1 << ly.desc["shift"])) == (1 << (ly.desc["shift"] - 1))).all()
               for ly in ties)
    assert any((ly.acc < 0).any() for ly in ties)   # negative ties round toward +infinity
    mem, _ = run_drain(cfg, layers, ready_prob=0.8, seed=11)
    compare_memory(cfg, layers, mem)


def test_comparison_catches_errors():
    """A wrong value, a padding write or a missing write fails the comparison."""
    cfg = CFG_SMALL
    rng = np.random.default_rng(5)
    layers = place(cfg, [make_layer(cfg, rng, 0, bp=2, k=2, R=3, C=3, n_ch=2,
                                    out_mode=OUT_REQUANT, mult=7, shift=3, style="small")])
    mem, tr = run_drain(cfg, layers)
    compare_memory(cfg, layers, mem)
    # one expected element off by one
    exp = [ly.expected(cfg) for ly in layers]
    exp[0][1, 2] += 1
    with pytest.raises(AssertionError, match="layer 0 row 1 column 2"):
        compare_memory(cfg, layers, mem, exp)
    # a byte written into the row padding (C=3 of eb=1 in a 4-byte row)
    bad = bytearray(mem)
    bad[layers[0].desc["o_addr"] + 3] ^= 0xFF
    with pytest.raises(AssertionError, match="padding"):
        compare_memory(cfg, layers, bad)
    # an element never written, written twice, or a padding byte written
    check_write_counts(cfg, layers, tr.count)
    o, os_ = layers[0].desc["o_addr"], row_stride(cfg, layers[0])
    for addr, n in ((o + os_, 0), (o + os_, 2), (o + 3, 1)):
        count = list(tr.count)
        count[addr] = n
        with pytest.raises(AssertionError, match=f"byte {addr:#x} written {n} times"):
            check_write_counts(cfg, layers, count)


def test_contract_check_catches_timing_errors():
    """The cycle-by-cycle check fails against a model with a wrong latency."""
    cfg = CFG_SMALL
    rng = np.random.default_rng(6)
    layers = place(cfg, [make_layer(cfg, rng, 0, R=2, C=2, n_ch=1)])
    for lat in (Drain.LATENCY - 1, Drain.LATENCY + 1):
        with pytest.raises(AssertionError, match="cycle"):
            run_drain(cfg, layers, model_latency=lat)
