"""Cycle model of the NPU core, equal to the RTL (``hw/core.py``) cycle for cycle.

``layer_cycles(cfg, R, P, C, bp=.., k=.., bias=.., out_mode=.., mem=MemTiming())`` is
the number of cycles the cocotb bench measures for one layer (from the cycle the command
is accepted to the first cycle ``busy`` is 0) under the deterministic memory model of
``hw/tb/memory.py`` (``backpressure`` must be 0). ``layer_timing`` returns the same
count with a breakdown (:class:`LayerTiming`).

The model is an event simulation at the granularity of loads (runs of read requests),
steps and groups (one PE-array group each), with closed forms for runs of requests, and
a steady-state extrapolation: at every step boundary the relative timing state of all
engines is recorded, and when it repeats at a distance ``d`` steps over which the step
sequence is periodic, the remaining whole periods are skipped exactly. The structure,
every constant and its origin in the RTL are in ``docs/cycle_model.md``.
"""
from __future__ import annotations

import operator
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW
from fluidnpu.hw.runner import MemTiming

__all__ = ["LayerTiming", "layer_cycles", "layer_timing", "CycleModelError",
           "START_CYCLES", "pipe_latency", "buf_latency", "DRAIN_LATENCY"]

# ---- constants taken from the RTL (see docs/cycle_model.md) --------------------------
#: accept (IDLE) -> PREP -> PREP2 -> START -> first SETUP: the first SETUP is 4 cycles after
#: the accept cycle (``NPUCore.START_CYCLES = 3`` counts PREP, PREP2 and START)
START_CYCLES = 4


def pipe_latency(cfg: HwConfig) -> int:
    """Last issue cycle of a group -> its push into the row stage: ``NPUCore.pipe_latency``
    = ``OperandBuffers.latency`` (request register, memory read, output register, then the
    X copy network's stages, two levels each and at least one: 3 + max(1, ceil(log2(tc) /
    2))) + ``PEArray.latency`` (multiply with operand and product registers, the product in
    a fabric register, adder tree one stage per level, accumulate: 4 + log2(tp)) +
    ``RowStage.stack_stages`` (the first row through the stacking tree, one stage per
    level: log2(tc)); 12 for the 4 x 4, 14 for the 8 x 4, 15 for the default 8 x 8. (Until
    6 Dec 2026 the stacking tree's stages were in the PE array, with the same total.)"""
    ltc = cfg.tc.bit_length() - 1
    ltp = cfg.tp.bit_length() - 1
    return buf_latency(cfg) + 4 + ltp + ltc


def buf_latency(cfg: HwConfig) -> int:
    """Issue cycle -> the operands out of the buffers (``op_valid``): ``OperandBuffers.latency``
    (request register, memory read, output register, the X copy network's stages); a
    slot's memory is freed then (section 2); 5 on the 8 x 8."""
    return 3 + max(1, -(-(cfg.tc.bit_length() - 1) // 2))

#: the row stage's push -> entry readable in its head FIFO (``r_rdy`` one cycle later)
STAGE_DELAY = 1
#: beat issued by the drain's s0 -> write on ``wr_req`` (``Drain.LATENCY``: the row stage's
#: two read cycles, then the drain's ten)
DRAIN_LATENCY = 12
#: read response transferred in m -> ``x_done``/``w_done`` counts it in m + 7
#: (``Loader.DECODE_STAGES + OperandBuffers.WRITE_STAGES``)
DONE_DELAY = 7
#: free pulse in f -> the loader's in-flight load count (``ld_x_out``) takes it in f + 1
FREE_DELAY = 1
#: last write transferred in n -> ack in n + Lw -> ``wr_pending`` 0 in n + Lw + 1 ->
#: FINISH passes, IDLE (busy 0) in n + Lw + 2
END_DELAY = 2

_NEG = -(1 << 62)          # "long ago"
_OLD = "old"               # snapshot marker for a time too far back to matter


class CycleModelError(ValueError):
    """Arguments the cycle model (or the hardware) does not accept."""


@dataclass(frozen=True)
class LayerTiming:
    """Cycles of one layer and where they go.

    ``cycles = startup + setup_cycles + issue_cycles + load_stall + credit_stall + tail``:
    ``startup`` the 4 cycles before the first step setup; ``setup_cycles`` one SETUP cycle
    per step; ``issue_cycles`` cycles in which the compute issues a PE-array cycle
    (``sum groups x n_s``); ``load_stall`` cycles the compute waits in SETUP for a load
    (X, W or bias) to complete; ``credit_stall`` cycles it waits for the stage: a credit
    (groups issued - popped by the drain < ``stage_entries``) or the row stage's spacing
    (a group's last step at least its ``nrows`` cycles after the previous group's); ``tail`` from the end of the last issue to
    ``busy`` falling (pipeline, drain, last write acknowledgement).
    """
    cycles: int
    issue_cycles: int
    setup_cycles: int
    load_stall: int
    credit_stall: int
    startup: int
    tail: int
    macs: int
    utilisation: float          #: macs / (cycles * tc * tp)
    steps: int
    groups: int
    simulated_steps: int        #: steps simulated event by event (the rest extrapolated)

    @property
    def stall_cycles(self) -> int:
        return self.load_stall + self.credit_stall


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# ---- a request channel of the memory model (reads, or writes) -----------------------

class _Chan:
    """Request times of one stream of ``hw/tb/memory.py``: a request transfers at the
    earliest cycle >= its availability with (a) >= the previous transfer + ``I`` and
    (b) fewer than ``cap`` outstanding, i.e. >= the transfer ``cap`` requests back +
    ``lat`` + 1 (its response is transferred ``lat`` cycles after the request). (b) only
    binds when ``cap < lat + 1``."""

    __slots__ = ("I", "cap", "P", "windowed", "last", "hist")

    def __init__(self, interval: int, cap: int, lat: int):
        self.I = interval
        self.cap = cap
        self.P = lat + 1
        self.windowed = cap < lat + 1
        self.last = _NEG
        self.hist: deque = deque(maxlen=cap)

    def one(self, avail: int) -> int:
        t = self.last + self.I
        if avail > t:
            t = avail
        if self.windowed:
            h = self.hist
            if len(h) == self.cap and h[0] + self.P > t:
                t = h[0] + self.P
            h.append(t)
        self.last = t
        return t

    def run(self, start: int, n: int) -> int:
        """``n >= 1`` requests available from ``start``, each the cycle after the previous
        transfer (an FSM state issuing a beat per cycle); returns the last transfer."""
        I = self.I
        if not self.windowed:
            t = self.last + I
            if start > t:
                t = start
            t += (n - 1) * I
            self.last = t
            return t
        # Explicitly the first min(n, 2 cap) (the transient), then closed forms for
        # t[i] = max(t[i-1] + I, t[i-cap] + P) (i >= 1 inside the run):
        # * cap*I >= P: for i >= cap all cap gaps of the window lie in the run and are
        #   >= I, so t[i-1] + I >= t[i-cap] + cap*I >= t[i-cap] + P: spacing I.
        # * cap*I < P: suppose t[i] = t[i-1] + I > t[i-cap] + P. Follow the chain of
        #   I-spacings back to the first j with t[j] != t[j-1] + I, i.e. t[j] =
        #   t[j-cap] + P or j = 0. If j >= cap, t[i-cap] >= t[j-cap] + (i-j)I gives
        #   t[i-cap] + P >= t[i-1] + I, a contradiction; if j <= i - cap, then t[i-cap] =
        #   t[j] + (i-cap-j)I and P > cap*I give one too. So j > i - cap and j < cap:
        #   i < 2 cap - 1. Hence t[i] = t[i-cap] + P for every i >= 2 cap - 1.
        cap, P = self.cap, self.P
        m = min(n, 2 * cap)
        seq = []
        t = self.one(start)
        seq.append(t)
        for _ in range(m - 1):
            t = self.one(t + 1)
            seq.append(t)
        if n == m:
            return t
        if cap * I >= P:
            last = t + (n - m) * I
            self.hist.clear()
            self.hist.extend(last - (cap - 1 - i) * I for i in range(cap))
        else:
            def at(i):
                q = (i - cap) // cap
                return seq[i - q * cap] + q * P
            last = at(n - 1)
            self.hist.clear()
            self.hist.extend(at(i) for i in range(n - cap, n))
        self.last = last
        return last

    def shift(self, dt: int) -> None:
        if self.last != _NEG:
            self.last += dt
        if self.windowed:
            h = [x + dt for x in self.hist]
            self.hist.clear()
            self.hist.extend(h)

    def snap(self, ref: int, low: int) -> tuple:
        s = (_rel(self.last, ref, low),)
        if self.windowed:
            s += tuple(_rel(x, ref, low) for x in self.hist)
        return s


def _rel(t, ref: int, low: int):
    if t is None:
        return None
    return t - ref if t >= low else _OLD


# ---- the drain ------------------------------------------------------------------------

class _FastDrain:
    """Drain when writes never stall (``interval == 1`` and ``wr_depth >= wr_latency + 1``):
    an entry available in ``a`` is accepted in ``p = max(a, free)``, its ``n`` beats issue
    in ``p+1 .. p+n`` (the next entry can be accepted in ``p+n``), writes transfer
    ``DRAIN_LATENCY`` cycles after their beat."""

    __slots__ = ("free", "last_w")

    def __init__(self):
        self.free = _NEG
        self.last_w = _NEG

    def accept(self, avail: int, n: int, write: bool) -> int:
        p = self.free if self.free > avail else avail
        self.free = p + n
        if write:
            self.last_w = p + n + DRAIN_LATENCY
        return p

    def finish(self) -> int:
        return self.last_w

    def shift(self, dt: int) -> None:
        self.free += dt
        self.last_w += dt

    def snap(self, ref: int, low: int) -> tuple:
        return (_rel(self.free, ref, low),)


class _TickDrain:
    """Drain with write stalls, tick by tick (a tick is a cycle without stall). The drain's
    pipeline moves rigidly: a beat issued in tick T is on ``wr_req`` in tick
    T + DRAIN_LATENCY; a cycle in which a write is on ``wr_req`` but ``wr_req.ready`` is 0
    freezes all of it."""

    __slots__ = ("now", "pipe", "left", "wbeat", "wr")

    def __init__(self, wr: _Chan):
        self.now = -1                    # real cycle of the last processed tick
        self.pipe = deque([False] * DRAIN_LATENCY)   # beats of the last DRAIN_LATENCY ticks (write?)
        self.left = 0                    # beats of the held entry still to issue
        self.wbeat = False               # ... and whether they write
        self.wr = wr

    def _tick(self) -> None:
        out = self.pipe.popleft()
        t = self.now + 1
        if out:
            t = self.wr.one(t)
        self.now = t
        if self.left:
            self.pipe.append(self.wbeat)
            self.left -= 1
        else:
            self.pipe.append(False)

    def accept(self, avail: int, n: int, write: bool) -> int:
        while True:
            if not self.left and self.now + 1 < avail and not any(self.pipe):
                self.now = avail - 1             # idle ticks, nothing to stall on
            self._tick()
            if not self.left and self.now >= avail:
                self.left, self.wbeat = n, write
                return self.now

    def finish(self) -> int:
        while self.left or any(self.pipe):
            self._tick()
        return self.wr.last

    def shift(self, dt: int) -> None:
        self.now += dt
        self.wr.shift(dt)

    def snap(self, ref: int, low: int) -> tuple:
        return (_rel(self.now, ref, low), tuple(self.pipe), self.left, self.wbeat) + \
            self.wr.snap(ref, low)


# ---- the layer ------------------------------------------------------------------------

def _check(cfg: HwConfig, R, P, C, bp, k, out_mode, mem: MemTiming) -> None:
    if not isinstance(cfg, HwConfig):
        raise CycleModelError(f"cfg = {cfg!r}: must be a HwConfig")
    for name, v in (("R", R), ("P", P), ("C", C)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CycleModelError(f"{name} = {v!r}: must be a positive integer")
    if bp not in cfg.bp_choices:
        raise CycleModelError(f"bp = {bp!r}: must be one of {cfg.bp_choices}")
    if k not in cfg.k_choices:
        raise CycleModelError(f"k = {k!r}: must be one of {cfg.k_choices}")
    if out_mode not in (0, 1):
        raise CycleModelError(f"out_mode = {out_mode!r}: must be 0 (raw) or 1 (requant)")
    if not isinstance(mem, MemTiming):
        raise CycleModelError(f"mem = {mem!r}: must be a MemTiming")
    if mem.backpressure:
        raise CycleModelError(f"mem.backpressure = {mem.backpressure}: the cycle model assumes "
                              f"deterministic memory timing (backpressure 0)")


class _Layer:
    """Static description of a layer's steps (docs/architecture.md, "Tiling")."""

    def __init__(self, cfg: HwConfig, R, P, C, bp, k, bias, out_mode):
        tc, tp, M = cfg.tc, cfg.tp, cfg.mem_bytes
        tr = cfg.tile_rows(P, k)
        eb = cfg.elem_bytes
        self.R, self.P, self.C, self.bp = R, P, C, bp
        seg = tp // bp
        self.S = S = k * seg
        self.F = F = tc // k
        cm = cfg.chunk_max(k, tr)
        self.rows = cfg.row_tile_sizes(R, tr)
        self.n_rt = len(self.rows)
        # the first of two balanced last row tiles, if they are balanced (else -1)
        self.pen = self.n_rt - 2 if self.n_rt >= 2 and self.rows[-2] != tr else -1
        self.n_ct = _ceil(C, F)
        self.chunks = cfg.chunk_sizes(P, k, tr)      # the last two balanced (HwConfig)
        self.n_ch = len(self.chunks)
        # the chunk before the last is a half chunk (the last two balanced)
        self.cbal = self.n_ch >= 2 and self.chunks[-2] != cm
        self.rt_len = self.n_ct * self.n_ch
        self.n_steps = self.n_rt * self.rt_len
        self.single = self.n_ct == 1 and self.n_ch == 1
        # chunked with X resident: X loaded a chunk a step at each row tile's first column
        # tile, one slot per row tile (HwConfig.x_resident)
        self.xres = cfg.x_resident(P, k)
        # X of row tile rt + 1 is loaded in parts of ``xq`` rows, one part after each W
        # load of row tile rt but the first (hw/loader.py)
        self.ilv = self.n_ch == 1 and self.n_ct > 1 and self.n_rt > 1
        self.xq = max(1, tr >> ((self.n_ct - 1).bit_length() - 1)) if self.ilv else 0
        self.xparts = _ceil(tr, self.xq) if self.ilv else 0
        dw = M // 4 if out_mode == OUT_RAW else cfg.elems_per_beat
        self.bias = bool(bias)
        self.tr, self.M, self.eb, self.dw = tr, M, eb, dw
        self._cache = {}

    def step(self, j: int):
        """Per-step values, cached by the step's class (rt first/last, ct first/last,
        last chunk, and the bias beat count, which can depend on the column offset)."""
        rt, rem = divmod(j, self.rt_len)
        ct, ch = divmod(rem, self.n_ch)
        last_rt = rt == self.n_rt - 1
        last_ct = ct == self.n_ct - 1
        last_ch = ch == self.n_ch - 1
        need_bias = self.bias and last_ch
        nbb = 0
        if need_bias:
            M = self.M
            c0 = ct * self.F
            ncols = min(self.F, self.C - c0)
            boff = (c0 * 4) & (M - 1)
            nbb = (boff + ncols * 4 + M - 1) // M
        key = (rt == 0, last_rt, rt == self.pen, ct == 0, last_ct, last_ch, self.chunks[ch], nbb,
               self.xres and ct == 0 and ch > 0)
        if self.ilv:
            key += (None if last_rt else self.rows[rt + 1], min(ct, self.xparts + 1))
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self._make(rt, ct, ch, nbb)
        return v

    def _make(self, rt, ct, ch, nbb):
        M, eb, bp = self.M, self.eb, self.bp
        rows = self.rows[rt]
        ncols = min(self.F, self.C - ct * self.F)
        ln = self.chunks[ch]
        n_s = _ceil(ln, self.S)
        n_g = _ceil(rows, bp)
        nb = _ceil(ln * eb, M)
        x_each = self.n_ch > 1 and not self.xres      # X loaded for every step
        x_new = x_each or ct == 0
        x_piece = self.xres and ch > 0                  # a resident X's later chunk
        x_wait = self.ilv and rt > 0 and ct == 0        # X loaded in parts in row tile rt - 1
        x_whole = x_new and not x_wait
        w_new = not self.single or rt == 0
        xpb, xp_last = 0, False                         # this step's part of the next X
        if self.ilv and rt < self.n_rt - 1 and ct > 0:
            nxt, r0 = self.rows[rt + 1], (ct - 1) * self.xq
            if r0 < nxt:
                xpb = min(self.xq, nxt - r0) * nb
                xp_last = r0 + self.xq >= nxt
        last_ch = ch == self.n_ch - 1
        x_last = x_each or (ct == self.n_ct - 1 and last_ch)
        w_last = not self.single or rt == self.n_rt - 1
        cb = _ceil(ncols, self.dw)
        fb = bp * cb                                   # drain beats of a full group
        lb = (rows - (n_g - 1) * bp) * cb              # ... of the last group
        return (n_s, n_g, fb, lb, last_ch,
                rows * nb if x_whole else 0, ncols * nb if w_new else 0, nbb if w_new else 0,
                x_last, w_last, x_wait, xpb, xp_last, rows - (n_g - 1) * bp, x_piece)

    def periodic_end(self, j: int, d: int) -> int:
        """The largest ``e`` such that steps ``m`` and ``m - d`` behave the same (same step
        class) for every ``m`` in ``[j, e)``; ``j`` if there is none. Never past the last
        step but one (the last step ends the layer).

        A step's class depends on its chunk only through its length (a full chunk, the
        half chunk before a balanced last one, the last: ``HwConfig.chunk_sizes``) and,
        at the first column tile of a resident X, through "first" (the chunk that waits for
        the slot); on its column tile only through "first" (X loaded only when ``n_ch ==
        1`` or resident) and "last" (X freed when ``n_ch == 1`` or resident, fewer columns
        when ``F`` does not divide ``C``), and on its row tile
        only through "first" (W loaded once per layer when ``n_ct == n_ch == 1``), "last"
        (fewer rows when ``tr`` does not divide ``R``; W freed in the single case) and the
        half tile before the last when the last two are balanced (``pen``).
        """
        n_ch, n_ct, n_rt = self.n_ch, self.n_ct, self.n_rt
        if self.ilv:
            # X in parts: a step's class depends on its column tile (its part of the next
            # X) and on whether its row tile is the first (X loaded whole) or one of the
            # last three (the next X shorter, the pen tile, the last). Periods inside one
            # row tile: among the steps with a part that is not the last (column tiles
            # 1 .. np - 1) or among those with none (np + 1 .. n_ct - 2); else whole row
            # tiles between the first and the last three.
            rt, ct = divmod(j, self.rt_len)
            if d < self.rt_len:
                np_ = _ceil(self.rows[rt + 1], self.xq) if rt < n_rt - 1 else 0
                for a, b in ((1, np_ - 1), (np_ + 1, n_ct - 2)):
                    if a <= ct - d and ct <= b:
                        return max(j, min(rt * self.rt_len + b + 1, self.n_steps - 1))
                return j
            if d % self.rt_len or rt - d // self.rt_len < 1:
                return j
            tail = (self.pen if self.pen >= 0 else n_rt - 1) - 1
            if rt >= tail:
                return j
            return max(j, min(tail * self.rt_len, self.n_steps - 1))
        rt, rem = divmod(j, self.rt_len)
        ct, ch = divmod(rem, n_ch)
        nf = n_ch - 1 - self.cbal                     # full chunks: 0 .. nf - 1
        # inside one tile, full chunks (not the first of a resident X's first column tile)
        if d + (self.xres and ct == 0) <= ch <= nf - 1:
            return j - ch + nf
        if d % n_ch:
            return j
        kk = d // n_ch                                # whole tiles: work on tile indices
        u = j // n_ch                                 # tile index rt * n_ct + ct
        ct0 = n_ct > 1 and (n_ch == 1 or self.xres)
        ctl = n_ct > 1 and (n_ch == 1 or self.xres or self.C % self.F != 0)
        rt0 = n_rt > 1 and self.single
        rtl = n_rt > 1 and (self.single or self.R % self.tr != 0)
        if (ct0 or ctl) and kk % n_ct:
            # the tiles m and m - d have different column tiles: stay inside one row tile,
            # away from the column tiles that differ
            if ct - kk < (1 if ct0 else 0):
                return j
            vend = rt * n_ct + (n_ct - 1 if ctl else n_ct)
        else:
            # same column tile class: only the row tile classes can differ
            last0 = (n_rt - 1) * n_ct                 # first tile of the last row tile
            tail0 = self.pen * n_ct if self.pen >= 0 else last0   # ... of the pen tile
            if rt0 and u - kk < n_ct:
                return j
            if not rtl or u - kk >= last0:
                vend = n_rt * n_ct
            elif u - kk >= tail0:                     # both in the pen row tile
                if u >= last0:
                    return j
                vend = last0
            elif u < tail0:
                vend = tail0
            else:
                return j
        return max(j, min(vend * n_ch, self.n_steps - 1))



_NO_WAIT = (None, None)


def _load(rd, t, free, beats, done_lat, bias=0, bfree=None):
    """One X or W load: its WAIT state waits for the slot freed two loads ago, then the
    request state issues ``beats`` reads, then (W) ``bias`` bias beats once that load's
    bias is free (``bfree``: the bias history, as ``free``). Returns the state after it,
    the cycle the load counts as done for the compute, and the slot history shifted by
    one load."""
    c = t if free[0] is None or free[0] <= t else free[0]
    z = rd.run(c + 1, beats)
    if bias:
        b = z + 1 if bfree[0] is None or bfree[0] <= z + 1 else bfree[0]
        z = rd.run(b, bias)
    return z + 1, z + done_lat, [free[1], None]

def _simulate(cfg: HwConfig, lay: _Layer, mem: MemTiming, extrapolate: bool):
    L = mem.latency
    Lw = mem.wr_latency if mem.wr_latency is not None else L
    I = mem.interval
    depth = mem.depth if mem.depth is not None else L + 1
    wdepth = mem.wr_depth if mem.wr_depth is not None else Lw + 1
    rd = _Chan(I, min(depth, cfg.rd_outstanding), L)
    wr = _Chan(I, wdepth, Lw)
    drain = _FastDrain() if (I == 1 and not wr.windowed) else _TickDrain(wr)
    H = max(L, Lw) + 2 * I + 16          # a time older than ref - H cannot matter
    done_lat = L + DONE_DELAY
    pipe = pipe_latency(cfg)
    fdel = buf_latency(cfg) + FREE_DELAY  # last issue -> a slot's memory free for the loader
    bdel = pipe + FREE_DELAY              # ... -> a W slot's bias free for the loader
    avl = pipe + STAGE_DELAY              # last issue -> entry readable by the drain

    sigma = START_CYCLES                  # compute: first SETUP cycle of the next step
    ld = START_CYCLES                     # loader: cycle it is in STEP for the next step
    xf = [None, None]                     # free-visible times of X loads q-2, q-1
    xpend = 0                             # X loads issued whose free time is not known yet
    xready = _NEG                         # the last X load done (loaded in parts)
    wf = [None, None]
    bf = [None, None]                     # bias free-visible times of W loads q-2, q-1
    D = cfg.stage_entries
    pq = deque([_NEG] * D, maxlen=D)      # drain accept times of groups i-D .. i-1
    hold = _NEG                           # earliest cycle of the next group's last step
    n_groups = 0
    load_stall = credit_stall = 0
    seen: dict = {}
    simulated = 0
    n_steps = lay.n_steps
    j = 0
    while j < n_steps:
        if extrapolate:
            low = min(sigma, ld) - H
            key = (ld - sigma, xpend, _rel(xready, sigma, low),
                   _rel(xf[0], sigma, low), _rel(xf[1], sigma, low),
                   _rel(wf[0], sigma, low), _rel(wf[1], sigma, low),
                   _rel(bf[0], sigma, low), _rel(bf[1], sigma, low),
                   _rel(hold, sigma, low), *(_rel(p, sigma, low) for p in pq)) + \
                rd.snap(sigma, low) + drain.snap(sigma, low)
            cur = (j, sigma, n_groups, load_stall, credit_stall)
            hits = seen.get(key)
            if hits is None:
                seen[key] = [cur]
            else:
                best = None
                for old in hits:
                    d = j - old[0]
                    N = (lay.periodic_end(j, d) - j) // d
                    if N and (best is None or N * d >= best[0] * best[1]):
                        best = (N, d, old)
                if best is not None:
                    N, d, old = best
                    # the state repeats after d steps of a periodic stretch: skip N periods
                    dt = N * (sigma - old[1])
                    j += N * d
                    sigma += dt
                    ld += dt
                    xf = [None if v is None else v + dt for v in xf]
                    xready += dt
                    wf = [None if v is None else v + dt for v in wf]
                    bf = [None if v is None else v + dt for v in bf]
                    pq = deque((p + dt for p in pq), maxlen=D)
                    hold += dt
                    rd.shift(dt)
                    drain.shift(dt)
                    n_groups += N * (n_groups - old[2])
                    load_stall += N * (load_stall - old[3])
                    credit_stall += N * (credit_stall - old[4])
                    continue
                hits.append(cur)
                if len(hits) > 32:
                    del hits[0]
        simulated += 1
        (n_s, n_g, fb, lb, last_ch, xb, wb, nbb, x_last, w_last, x_wait, xpb, xp_last,
         nr_last, x_piece) = lay.step(j)
        # -- loader: STEP (ld) -> [XWAIT -> XISS] -> [WWAIT -> WISS (-> BISS)]
        #    -> [XPWAIT -> XPISS] -> NEXT
        t = ld + 1                       # entry of the state after STEP
        ready = sigma
        if xb:
            if x_piece:
                # a resident X's later chunk: into its row tile's slot, no wait
                t, done, _ = _load(rd, t, _NO_WAIT, xb, done_lat)
            else:
                t, done, xf = _load(rd, t, xf, xb, done_lat)
                xpend += 1
            if done > ready:
                ready = done
        if x_wait and xready > ready:     # (never binds: the step's W load is issued after
            ready = xready                #  the last part, so it is done later)
        if wb:
            t, done, wf = _load(rd, t, wf, wb, done_lat, nbb, bf)
            bf = [bf[1], None]
            if done > ready:
                ready = done
        if xpb:
            # a part of the next row tile's X: its WAIT state waits for the slot (only
            # the first part can wait: the slot test cannot change until the last)
            if xp_last:
                t, xready, xf = _load(rd, t, xf, xpb, done_lat)
                xpend += 1
            else:
                t, _, _ = _load(rd, t, xf, xpb, done_lat)
        ld = t + 1                       # NEXT in t, STEP of the next step in t + 1
        # -- compute: SETUP (until loads done and a credit) -> RUN, groups of n_s cycles
        cred = pq[0] + 1
        c = ready if ready > cred else cred
        load_stall += ready - sigma
        credit_stall += c - ready if c > ready else 0
        tstart = c + 1
        accept = drain.accept
        last_g = n_g - 1
        bp = lay.bp
        for g in range(n_g):
            if g:
                cred = pq[0] + 1
                if cred > tstart:
                    credit_stall += cred - tstart
                    tstart = cred
            # group ends at least nrows apart (the row stage writes a row a cycle), tested
            # at the first step: a group's steps issue back to back
            h = hold - n_s + 1
            if h > tstart:
                credit_stall += h - tstart
                tstart = h
            e = tstart + n_s - 1
            pq.append(accept(e + avl, fb if g < last_g else lb, last_ch))
            hold = e + (bp if g < last_g else nr_last)
            tstart = e + 1
        n_groups += n_g
        sigma = tstart
        if x_last:
            xf[2 - xpend] = e + fdel     # the oldest X load in use (q-1, or q-2 in parts)
            xpend -= 1
        if w_last:
            wf[1] = e + fdel
            bf[1] = e + bdel
        j += 1
    last_w = drain.finish()
    end = last_w + Lw + END_DELAY
    return end, sigma, n_groups, load_stall, credit_stall, simulated


def layer_timing(cfg: HwConfig, R: int, P: int, C: int, *, bp: int, k: int, bias: bool,
                 out_mode: int, mem: MemTiming = MemTiming(),
                 extrapolate: bool = True) -> LayerTiming:
    """Cycles of one layer on the core with policy ``(bp, k)`` and their breakdown.

    ``extrapolate=False`` simulates every step (for checking the extrapolation).
    """
    try:
        R, P, C, bp, k, out_mode = (operator.index(v) for v in (R, P, C, bp, k, out_mode))
    except TypeError as e:
        raise CycleModelError(f"R, P, C, bp, k and out_mode must be integers ({e})") from None
    return _layer_timing(cfg, R, P, C, bp, k, bool(bias), out_mode, mem, bool(extrapolate))


@lru_cache(maxsize=1 << 16)
def _layer_timing(cfg, R, P, C, bp, k, bias, out_mode, mem, extrapolate) -> LayerTiming:
    _check(cfg, R, P, C, bp, k, out_mode, mem)
    lay = _Layer(cfg, R, P, C, bp, k, bias, out_mode)
    end, sigma, n_groups, ls, cs, simulated = _simulate(cfg, lay, mem, extrapolate)
    # sum over steps of n_g * n_s: closed form over the chunks, a sum over the row tiles
    S = lay.S
    chunks_ns = sum(_ceil(ln, S) for ln in lay.chunks)
    g_total = sum(_ceil(r, bp) for r in lay.rows)
    issue = g_total * lay.n_ct * chunks_ns
    assert n_groups == g_total * lay.n_ct * lay.n_ch, "group count does not add up"
    setup = lay.n_steps
    tail = end - sigma
    assert START_CYCLES + setup + issue + ls + cs + tail == end, "breakdown does not add up"
    macs = R * P * C
    return LayerTiming(cycles=end, issue_cycles=issue, setup_cycles=setup, load_stall=ls,
                       credit_stall=cs, startup=START_CYCLES, tail=tail, macs=macs,
                       utilisation=macs / (end * cfg.tc * cfg.tp), steps=lay.n_steps,
                       groups=g_total * lay.n_ct * lay.n_ch, simulated_steps=simulated)


def layer_cycles(cfg: HwConfig, R: int, P: int, C: int, *, bp: int, k: int, bias: bool,
                 out_mode: int, mem: MemTiming = MemTiming()) -> int:
    """Cycles the RTL takes for one layer (command accepted -> first cycle busy is 0)."""
    return layer_timing(cfg, R, P, C, bp=bp, k=k, bias=bias, out_mode=out_mode, mem=mem).cycles
