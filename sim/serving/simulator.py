"""Discrete-event serving simulator: many devices, one NPU, layer-boundary scheduling.

One server, so the event set is small: pre-drawn arrivals (sorted) and the end of
the NPU's current segment of ops. A *segment* runs a batch from its position to the
next point where something can happen (an exit head, a merge, the first boundary
after the next arrival for preemptive schedulers, or one op when the scheduler asked
to be consulted at every boundary); exits, merges and decisions happen between
segments. This is exact: nothing observable changes inside a segment.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import deque

import numpy as np

from .plan import Batch, ModelPlan

__all__ = ["Simulator", "SimulationError", "QUEUED", "RUNNING", "DONE", "DROPPED"]

FUTURE, QUEUED, RUNNING, DONE, DROPPED = 0, 1, 2, 3, 4
INF = float("inf")


class SimulationError(RuntimeError):
    """A scheduler made an invalid decision, or an invariant broke (check mode)."""


class Simulator:
    """The simulator; also the *view* a scheduler reads (public attributes below).

    View: ``now``, ``plans`` (per model :class:`ModelPlan`), ``queues`` (per model
    deque of request ids, oldest first; read only), ``n_queued``, ``arrival``,
    ``deadline``, ``slo``, ``device``, ``model_of`` (lists by request id),
    ``running`` / ``paused`` (:class:`Batch` or None), ``preemptions``, ``merges``;
    methods ``oldest_model()``, ``drop(rid, reason)``.
    """

    def __init__(self, requests, plans: list[ModelPlan], scheduler, *, warmup_t: float = 0.0,
                 queue_capacity: int | None = None, check: bool = False):
        self.plans = plans
        self.scheduler = scheduler
        self.arrival = requests.arrival.tolist()
        self.deadline = requests.deadline.tolist()
        self.slo = requests.slo_s.tolist()
        self.device = requests.device.tolist()
        self.model_of = requests.model.tolist()
        self._exit = requests.exit.tolist()          # drawn exits: simulator only
        self._arr_np, self._model_np, self._exit_np = requests.arrival, requests.model, requests.exit
        n = len(self.arrival)
        self.n = n
        self.queues = [deque() for _ in plans]
        self.n_queued = 0
        self.running: Batch | None = None
        self.paused: Batch | None = None
        self.now = 0.0
        self.preemptions = self.merges = 0
        self.start = [np.nan] * n
        self.finish = [np.nan] * n
        self.exit_taken = [-1] * n
        self.state = bytearray(n)
        self.drop_reason: dict[int, str] = {}
        self.warmup_t = warmup_t
        self.cap = queue_capacity
        self.check = check
        self.busy_w = 0.0          # busy seconds after warm-up
        self.busy_total = 0.0
        self.macs_w = 0            # MACs done after warm-up
        bm = max(p.b_max for p in plans)
        self.op_hist = [0] * (bm + 1)      # ops run at each batch size (after warm-up)
        self.start_hist = [0] * (bm + 1)   # batches started at each size (after warm-up)
        self.op_log: list[tuple] = []      # check mode: (t0, t1, model, pos0, pos1, size, batch id)
        self._spos = [0] * n if check else None
        self._bid = 0
        self._next = 0

    # -- view helpers ---------------------------------------------------------------
    def oldest_model(self) -> int:
        """Model index of the oldest queued request, or -1 when the FIFO is empty."""
        best, bm = INF, -1
        arr = self.arrival
        for m, q in enumerate(self.queues):
            if q and arr[q[0]] < best:
                best, bm = arr[q[0]], m
        return bm

    def drop(self, rid: int, reason: str) -> None:
        """Drop a queued request with ``reason`` (it counts as an SLO miss)."""
        if not 0 <= rid < self.n or self.state[rid] != QUEUED:
            raise SimulationError(f"drop(rid={rid}): the request is not queued")
        self.queues[self.model_of[rid]].remove(rid)
        self.n_queued -= 1
        self.state[rid] = DROPPED
        self.drop_reason[rid] = str(reason)

    # -- internals ------------------------------------------------------------------
    def _fail(self, msg):
        raise SimulationError(f"scheduler {self.scheduler!r} at t={self.now:.9f}s: {msg}")

    def _take(self, m, n, t) -> Batch:
        plans = self.plans
        if type(m) is not int or not 0 <= m < len(plans):
            self._fail(f"model = {m!r}: must be a model index from 0 to {len(plans) - 1}")
        q = self.queues[m]
        pl = plans[m]
        if type(n) is not int or not 1 <= n <= len(q) or n > pl.b_max:
            self._fail(f"batch of n = {n!r} from model {m}: must be from 1 to min(queued {len(q)}, "
                       f"B_max {pl.b_max})")
        self.n_queued -= n
        st, state = self.start, self.state
        if n == 1:
            r = q.popleft()
            rids = [r]
            st[r] = t
            state[r] = RUNNING
        else:
            rids = [q.popleft() for _ in range(n)]
            for r in rids:
                st[r] = t
                state[r] = RUNNING
        self._bid += 1
        b = Batch(self._bid, m, rids, self._exit, self.deadline, pl.n_exits, t)
        if t >= self.warmup_t:
            self.start_hist[n] += 1
        return b

    def _preempt(self, d, t):
        n, m, merge = d[1], d[2], d[3]
        run, par = self.running, self.paused
        if run is not None:
            if par is not None:
                self._fail("preempt: a batch is already paused (the hardware holds one)")
            par = run
        elif par is None:
            self._fail("preempt: nothing is running or paused")
        if m is None:
            m = par.model
        if merge:
            if m != par.model:
                self._fail(f"preempt(merge=True) with model {m}: the paused batch runs model {par.model}")
            if n + par.size > self.plans[m].b_max:
                self._fail(f"preempt n = {n}: merged batch {n} + {par.size} would exceed B_max "
                           f"{self.plans[m].b_max}")
        cost = 0.0
        if run is not None:
            cost = self.plans[par.model].preempt_s
            self.preemptions += 1
        self.paused = par
        t1 = t + cost
        self._busy(t, t1)
        new = self._take(m, n, t1)
        new.merge_at = par.pos if merge else -1
        self.running = new
        if self.check:
            self._check_disjoint()
        return t1

    def _busy(self, t0, t1):
        d = t1 - t0
        self.busy_total += d
        if t1 > self.warmup_t:
            self.busy_w += t1 - max(t0, self.warmup_t)

    def _check_disjoint(self):
        a = set(self.running.rids()) if self.running else set()
        b = set(self.paused.rids()) if self.paused else set()
        if a & b:
            raise SimulationError(f"invariant: requests {sorted(a & b)[:5]} are in two batches")
        for r in a | b:
            if self.state[r] != RUNNING:
                raise SimulationError(f"invariant: request {r} is in a batch but in state {self.state[r]}")

    # -- the lone-request shortcut ------------------------------------------------------
    def _lone_table(self):
        """What the shortcut needs, or None when it cannot apply.

        A request that arrives (after the warm-up) at an idle NPU with nothing queued or
        paused, under a scheduler that declares ``work_conserving``, starts at once as a
        batch of one; if it leaves before the next arrival, no decision, merge or hook can
        happen on the way, so its finish time is its arrival plus its batch-1 segments, summed
        in the order the event loop sums them (the same floats). Returns per request that
        finish time, the sorted indices of requests that are *not* such a lone request (the
        loop serves those), and prefix sums of ops, MACs and busy time for the statistics.
        """
        sched = self.scheduler
        if self.check or not getattr(sched, "work_conserving", False) or self.n == 0 \
                or type(sched).on_exit is not _base_on_exit or type(sched).on_batch_end is not _base_on_batch_end:
            return None
        n_ex = max(p.n_exits for p in self.plans)
        segs, ops, macs = [], np.zeros((len(self.plans), n_ex), np.int64), np.zeros((len(self.plans), n_ex), np.int64)
        leave = np.zeros((len(self.plans), n_ex))
        for m, pl in enumerate(self.plans):
            c = pl.cum[1]
            leave[m, :pl.n_exits] = pl.leave_s
            for h in range(pl.n_exits):
                p, k = 0, 0
                while True:
                    stop = pl.next_exit[p] + 1
                    while len(segs) <= k:
                        segs.append(np.zeros((len(self.plans), n_ex)))
                    segs[k][m, h] = c[stop] - c[p]
                    k += 1
                    if pl.op_exit[stop - 1] == h or stop == pl.n_ops:
                        break
                    p = stop
                ops[m, h] = stop
                macs[m, h] = pl.cum_macs[stop]
        arr = self._arr_np
        mi, ei = self._model_np, self._exit_np
        fin = arr.copy()
        for d in segs:
            fin = fin + d[mi, ei]
        fin = fin + leave[mi, ei]                             # as the loop adds it: after the exit op
        nxt = np.append(arr[1:], INF)
        lone = (arr >= self.warmup_t) & (fin + (1e-9 + 4e-15 * np.abs(fin)) < nxt)
        busy = np.concatenate(([0.0], np.cumsum(np.where(lone, fin - arr, 0.0))))
        return (fin.tolist(), np.flatnonzero(~lone).tolist(),
                np.concatenate(([0], np.cumsum(ops[mi, ei]))), np.concatenate(([0], np.cumsum(macs[mi, ei]))), busy)

    # -- the event loop ---------------------------------------------------------------
    def run(self) -> "Simulator":
        sched = self.scheduler
        sched.reset(self)
        decide = sched.decide
        preemptive = sched.preemptive
        hook_exit = type(sched).on_exit is not _base_on_exit
        hook_end = type(sched).on_batch_end is not _base_on_batch_end
        arr, N, plans, check = self.arrival, self.n, self.plans, self.check
        fin, taken, state, drawn = self.finish, self.exit_taken, self.state, self._exit
        op_hist, tw = self.op_hist, self.warmup_t
        queues, mdl, cap = self.queues, self.model_of, self.cap
        lone = self._lone_table()
        resume = lone is not None                             # work-conserving: skip one-answer decisions
        if lone is not None:
            l_fin, l_not, l_ops, l_macs, l_busy = lone
            n_not = len(l_not)
        bw = bt = 0.0                                         # busy seconds after warm-up, in all
        macs = 0                                              # MACs after warm-up
        t, nxt, need = 0.0, 0, True
        while True:
            if nxt < N and arr[nxt] <= t:                     # admit the arrivals up to now
                while nxt < N and arr[nxt] <= t:
                    if cap is not None and self.n_queued >= cap:
                        state[nxt] = DROPPED
                        self.drop_reason[nxt] = "queue_full"
                    else:
                        queues[mdl[nxt]].append(nxt)
                        state[nxt] = QUEUED
                        self.n_queued += 1
                    nxt += 1
                need = True
            run = self.running
            if run is None:                                   # idle NPU (maybe a paused batch)
                if self.n_queued == 0 and self.paused is None:
                    if nxt >= N:
                        break
                    if lone is not None:                      # serve lone requests in one go
                        j = bisect_left(l_not, nxt)
                        j = l_not[j] if j < n_not else N
                        if j > nxt:
                            k = j - nxt
                            fin[nxt:j] = l_fin[nxt:j]
                            self.start[nxt:j] = arr[nxt:j]
                            taken[nxt:j] = drawn[nxt:j]
                            state[nxt:j] = bytes((DONE,)) * k
                            op_hist[1] += int(l_ops[j] - l_ops[nxt])
                            macs += int(l_macs[j] - l_macs[nxt])
                            self.start_hist[1] += k
                            b = float(l_busy[j] - l_busy[nxt])
                            bw += b
                            bt += b
                            self._bid += k
                            t = l_fin[j - 1]
                            nxt = j
                            if nxt >= N:
                                break
                    t = arr[nxt]
                    continue
                if resume and (self.n_queued == 0 or (self.n_queued == 1 and self.paused is None)):
                    if self.n_queued == 0:                    # one work-conserving answer, no need to ask:
                        self.running, self.paused = self.paused, None     # resume the paused batch
                    else:                                     # or start the one queued request
                        self.running = self._take(self.oldest_model(), 1, t)
                    need = True
                    continue
                self.now = t
                d = decide(self)
                k = d[0]
                if k == "start":
                    if self.paused is not None:
                        self._fail("start: a batch is paused; resume it (CONTINUE) or preempt(...) for it")
                    m = self.oldest_model() if d[2] is None else d[2]
                    self.running = self._take(m, d[1], t)
                elif k == "preempt":
                    if self.paused is None:
                        self._fail("preempt with no running batch: use start(...)")
                    t = self._preempt(d, t)
                elif k == "continue" or k == "hold":
                    if self.paused is not None:
                        self.running, self.paused = self.paused, None
                    elif nxt < N:
                        t = arr[nxt]
                    elif self.n_queued:
                        self._fail(f"left {self.n_queued} requests queued with no arrivals to come")
                elif k == "wait":
                    u = INF if d[1] is None else d[1]
                    if u <= t:
                        self._fail(f"wait(until={d[1]!r}): must be later than now")
                    u = min(u, arr[nxt] if nxt < N else INF)
                    if u < INF:
                        t = u
                    elif self.n_queued:
                        self._fail(f"left {self.n_queued} requests queued with no arrivals to come")
                else:
                    self._fail(f"unknown decision {d!r}")
                need = True
                continue
            if need and preemptive and self.n_queued:         # layer boundary with work waiting
                if resume and self.paused is not None:        # nothing can be preempted: a work-conserving
                    need = False                              # scheduler holds; no need to ask
                else:
                    self.now = t
                    d = decide(self)
                    k = d[0]
                    if k == "hold":
                        need = False
                    elif k == "preempt":
                        t = self._preempt(d, t)
                        run = self.running
                    elif k != "continue":
                        self._fail(f"{k}: not allowed while a batch is running (use CONTINUE, HOLD, preempt)")
            pl = plans[run.model]
            s, p = run.size, run.pos
            c = pl.cum[s]
            stop = pl.next_exit[p] + 1
            if p < run.merge_at < stop:
                stop = run.merge_at
            if preemptive:
                if need and self.n_queued:
                    stop = p + 1
                elif nxt < N:
                    target = arr[nxt] - t + c[p]
                    if target < c[stop]:
                        stop = bisect_left(c, target, p + 1, stop)
            t1 = t + (c[stop] - c[p])
            if t1 < t:
                raise SimulationError(f"invariant: time goes back from {t} to {t1}")
            if check:
                self._check_segment(run, p, stop, t, t1)
            bt += t1 - t
            if t >= tw:
                bw += t1 - t
                op_hist[s] += stop - p
                cm = pl.cum_macs
                macs += (cm[stop] - cm[p]) * s
            elif t1 > tw:
                bw += t1 - tw
            t = t1
            run.pos = stop
            h = pl.op_exit[stop - 1]
            if h >= 0:
                g = run._groups[h]
                if g:
                    lv = pl.leave_s[h]
                    if lv:                                    # the leaving samples' results are written
                        t1 = t + len(g) * lv
                        bt += t1 - t
                        if t >= tw:
                            bw += t1 - t
                        elif t1 > tw:
                            bw += t1 - tw
                        t = t1
                    for r in g:
                        if check and (drawn[r] != h or fin[r] == fin[r]):
                            raise SimulationError(f"invariant: request {r} (drawn exit {drawn[r]}) "
                                                  f"leaving at head {h}, finish {fin[r]}")
                        fin[r] = t
                        taken[r] = h
                        state[r] = DONE
                    run.size -= len(g)
                    run._groups[h] = ()
                    run._rids = None
                    need = True
                    if hook_exit:
                        self.now = t
                        sched.on_exit(self, run, h, len(g))
                if run.size == 0 or stop == pl.n_ops:
                    if run.size:
                        raise SimulationError(f"invariant: batch {run.id} finished with {run.size} samples left")
                    self.running = None
                    need = True
                    if hook_end:
                        self.now = t
                        sched.on_batch_end(self, run)
                    continue
            if run.merge_at == stop:
                par = self.paused
                t1 = t + pl.merge_s
                self._busy(t, t1)
                t = t1
                par.absorb(run)
                self.running, self.paused = par, None
                self.merges += 1
                need = True
                if check:
                    self._check_disjoint()
        self.busy_w += bw
        self.busy_total += bt
        self.macs_w += macs
        self.now = t
        self.t_end = t
        if check:
            self._check_final()
        return self

    def _check_segment(self, run, p, stop, t0, t1):
        if not t1 >= t0:
            raise SimulationError(f"invariant: time goes back from {t0} to {t1}")
        if self.op_log and t0 < self.op_log[-1][1] - 1e-15:
            raise SimulationError(f"invariant: segment at {t0} overlaps the previous one ending "
                                  f"{self.op_log[-1][1]}")
        sp = self._spos
        for r in run.rids():
            if sp[r] != p or self.state[r] != RUNNING:
                raise SimulationError(f"invariant: request {r} at op {sp[r]} (state {self.state[r]}) "
                                      f"in batch {run.id} at op {p}")
            sp[r] = stop
        if self.paused is not None and set(run.rids()) & set(self.paused.rids()):
            raise SimulationError("invariant: a request is in the running and the paused batch")
        self.op_log.append((t0, t1, run.model, p, stop, run.size, run.id))

    def _check_final(self):
        st = np.frombuffer(bytes(self.state), dtype=np.uint8)
        bad = np.flatnonzero((st != DONE) & (st != DROPPED))
        if bad.size:
            raise SimulationError(f"invariant: {bad.size} requests neither finished nor dropped "
                                  f"(first {bad[:5].tolist()})")
        for r in range(self.n):
            if st[r] == DONE:
                pl = self.plans[self.model_of[r]]
                if self._spos[r] != pl.exit_op[self._exit[r]] + 1:
                    raise SimulationError(f"invariant: request {r} ran {self._spos[r]} ops; its exit needs "
                                          f"{pl.exit_op[self._exit[r]] + 1}")
                if not self.arrival[r] <= self.start[r] <= self.finish[r]:
                    raise SimulationError(f"invariant: request {r} arrival/start/finish out of order")
            elif r not in self.drop_reason:
                raise SimulationError(f"invariant: request {r} dropped without a reason")


def _base_hooks():
    from fluidnpu.sched.base import Scheduler
    return Scheduler.on_exit, Scheduler.on_batch_end


_base_on_exit, _base_on_batch_end = _base_hooks()
