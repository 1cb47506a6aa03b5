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
from fluidnpu.hw.runner import MemTiming

from .cycle_engines import _NEG, _Chan, _FastDrain, _rel, _TickDrain
from .cycle_steps import _ceil, _Layer

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

class _State:
    """The engines' timing state between steps (all times absolute cycles)."""

    __slots__ = ("sigma", "ld", "xf", "xpend", "xready", "wf", "bf", "pq", "hold",
                 "n_groups", "load_stall", "credit_stall")

    def __init__(self, stage_entries: int):
        self.sigma = START_CYCLES         # compute: first SETUP cycle of the next step
        self.ld = START_CYCLES            # loader: cycle it is in STEP for the next step
        self.xf = [None, None]            # free-visible times of X loads q-2, q-1
        self.xpend = 0                    # X loads issued whose free time is not known yet
        self.xready = _NEG                # the last X load done (loaded in parts)
        self.wf = [None, None]
        self.bf = [None, None]            # bias free-visible times of W loads q-2, q-1
        D = stage_entries
        self.pq = deque([_NEG] * D, maxlen=D)   # drain accept times of groups i-D .. i-1
        self.hold = _NEG                  # earliest cycle of the next group's last step
        self.n_groups = 0
        self.load_stall = self.credit_stall = 0

    def key(self, low: int) -> tuple:
        """The state relative to ``sigma`` (times before ``low`` cannot matter)."""
        sigma = self.sigma
        xf, wf, bf = self.xf, self.wf, self.bf
        return (self.ld - sigma, self.xpend, _rel(self.xready, sigma, low),
                _rel(xf[0], sigma, low), _rel(xf[1], sigma, low),
                _rel(wf[0], sigma, low), _rel(wf[1], sigma, low),
                _rel(bf[0], sigma, low), _rel(bf[1], sigma, low),
                _rel(self.hold, sigma, low), *(_rel(p, sigma, low) for p in self.pq))

    def shift(self, dt: int) -> None:
        self.sigma += dt
        self.ld += dt
        self.xf = [None if v is None else v + dt for v in self.xf]
        self.xready += dt
        self.wf = [None if v is None else v + dt for v in self.wf]
        self.bf = [None if v is None else v + dt for v in self.bf]
        self.pq = deque((p + dt for p in self.pq), maxlen=self.pq.maxlen)
        self.hold += dt


def _loader_step(st: _State, step: tuple, rd: _Chan, done_lat: int) -> int:
    """The loader's walk for one step: STEP (``st.ld``) -> [XWAIT -> XISS] -> [WWAIT ->
    WISS (-> BISS)] -> [XPWAIT -> XPISS] -> NEXT. Returns the cycle the step's loads are
    done for the compute (at least ``st.sigma``)."""
    (_, _, _, _, _, xb, wb, nbb, _, _, x_wait, xpb, xp_last, _, x_piece) = step
    t = st.ld + 1                        # entry of the state after STEP
    ready = st.sigma
    if xb:
        if x_piece:
            # a resident X's later chunk: into its row tile's slot, no wait
            t, done, _ = _load(rd, t, _NO_WAIT, xb, done_lat)
        else:
            t, done, st.xf = _load(rd, t, st.xf, xb, done_lat)
            st.xpend += 1
        if done > ready:
            ready = done
    if x_wait and st.xready > ready:     # (never binds: the step's W load is issued after
        ready = st.xready                #  the last part, so it is done later)
    if wb:
        t, done, st.wf = _load(rd, t, st.wf, wb, done_lat, nbb, st.bf)
        st.bf = [st.bf[1], None]
        if done > ready:
            ready = done
    if xpb:
        # a part of the next row tile's X: its WAIT state waits for the slot (only the
        # first part can wait: the slot test cannot change until the last)
        if xp_last:
            t, st.xready, st.xf = _load(rd, t, st.xf, xpb, done_lat)
            st.xpend += 1
        else:
            t, _, _ = _load(rd, t, st.xf, xpb, done_lat)
    st.ld = t + 1                        # NEXT in t, STEP of the next step in t + 1
    return ready


def _compute_step(st: _State, step: tuple, ready: int, bp: int, accept, avl: int,
                  fdel: int, bdel: int) -> None:
    """The compute for one step: SETUP (until the loads are done and a credit) -> RUN,
    groups of ``n_s`` cycles, each accepted by the drain (``accept``); then the slots the
    step used last are freed."""
    (n_s, n_g, fb, lb, last_ch, _, _, _, x_last, w_last, _, _, _, nr_last, _) = step
    pq = st.pq
    credit_stall = st.credit_stall
    cred = pq[0] + 1
    c = ready if ready > cred else cred
    st.load_stall += ready - st.sigma
    credit_stall += c - ready if c > ready else 0
    tstart = c + 1
    hold = st.hold
    last_g = n_g - 1
    for g in range(n_g):
        if g:
            cred = pq[0] + 1
            if cred > tstart:
                credit_stall += cred - tstart
                tstart = cred
        # group ends at least nrows apart (the row stage writes a row a cycle), tested at
        # the first step: a group's steps issue back to back
        h = hold - n_s + 1
        if h > tstart:
            credit_stall += h - tstart
            tstart = h
        e = tstart + n_s - 1
        pq.append(accept(e + avl, fb if g < last_g else lb, last_ch))
        hold = e + (bp if g < last_g else nr_last)
        tstart = e + 1
    st.hold = hold
    st.credit_stall = credit_stall
    st.n_groups += n_g
    st.sigma = tstart
    if x_last:
        st.xf[2 - st.xpend] = e + fdel   # the oldest X load in use (q-1, or q-2 in parts)
        st.xpend -= 1
    if w_last:
        st.wf[1] = e + fdel
        st.bf[1] = e + bdel


def _simulate(cfg: HwConfig, lay: _Layer, mem: MemTiming, extrapolate: bool):
    L = mem.latency
    Lw = mem.wr_latency if mem.wr_latency is not None else L
    I = mem.interval
    depth = mem.depth if mem.depth is not None else L + 1
    wdepth = mem.wr_depth if mem.wr_depth is not None else Lw + 1
    rd = _Chan(I, min(depth, cfg.rd_outstanding), L)
    wr = _Chan(I, wdepth, Lw)
    drain = _FastDrain(DRAIN_LATENCY) if (I == 1 and not wr.windowed) else _TickDrain(wr, DRAIN_LATENCY)
    H = max(L, Lw) + 2 * I + 16          # a time older than ref - H cannot matter
    done_lat = L + DONE_DELAY
    pipe = pipe_latency(cfg)
    fdel = buf_latency(cfg) + FREE_DELAY  # last issue -> a slot's memory free for the loader
    bdel = pipe + FREE_DELAY              # ... -> a W slot's bias free for the loader
    avl = pipe + STAGE_DELAY              # last issue -> entry readable by the drain
    st = _State(cfg.stage_entries)
    seen: dict = {}
    simulated = 0
    n_steps = lay.n_steps
    j = 0
    while j < n_steps:
        if extrapolate:
            sigma = st.sigma
            low = min(sigma, st.ld) - H
            key = st.key(low) + rd.snap(sigma, low) + drain.snap(sigma, low)
            cur = (j, sigma, st.n_groups, st.load_stall, st.credit_stall)
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
                    st.shift(dt)
                    rd.shift(dt)
                    drain.shift(dt)
                    st.n_groups += N * (st.n_groups - old[2])
                    st.load_stall += N * (st.load_stall - old[3])
                    st.credit_stall += N * (st.credit_stall - old[4])
                    continue
                hits.append(cur)
                if len(hits) > 32:
                    del hits[0]
        simulated += 1
        step = lay.step(j)
        ready = _loader_step(st, step, rd, done_lat)
        _compute_step(st, step, ready, lay.bp, drain.accept, avl, fdel, bdel)
        j += 1
    last_w = drain.finish()
    end = last_w + Lw + END_DELAY
    return end, st.sigma, st.n_groups, st.load_stall, st.credit_stall, simulated


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
