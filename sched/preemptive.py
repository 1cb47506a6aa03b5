"""Preemptive baselines: LazyBatching (catch-up and merge, exit-blind) and PREMA (token-based)."""
from __future__ import annotations

from itertools import islice

from .base import (CONTINUE, HOLD, MAX_BATCH, Scheduler, is_nonneg, register, preempt, start)

__all__ = ["Lazy", "Prema"]

INF = float("inf")


def _idle_start(sched, view):
    m = view.oldest_model()
    if m < 0:
        return CONTINUE
    return start(min(len(view.queues[m]), sched.batch_cap(view, m)), m)


@register
class Lazy(Scheduler):
    """LazyBatching (Choi et al., HPCA 2021), exit-blind.

    Idle: start a batch of every queued request of the oldest model (up to the cap).
    At a layer boundary with requests of the running model waiting and no paused
    batch: pause, run ``n = min(queued, cap - size)`` of them from layer 0 and merge
    them at the running batch's layer, if the running batch's predicted finish with
    the catch-up still meets the deadlines of its members that would meet them
    without it (minus ``slack_ms``). Predictions assume no sample exits: the batch
    keeps its size to the last layer.
    """
    name = "lazy"
    work_conserving = True
    preemptive = True
    knob_spec = {"max_batch": MAX_BATCH, "slack_ms": (0.0, is_nonneg, "a number of milliseconds >= 0")}

    def decide(self, view):
        run, par = view.running, view.paused
        if run is None and par is None:
            return _idle_start(self, view)
        if run is not None and par is not None:
            return HOLD
        X = run if run is not None else par
        m, s, p = X.model, X.size, X.pos
        q = view.queues[m]
        n = min(len(q), self.batch_cap(view, m) - s)
        if n <= 0:
            return HOLD
        pl = view.plans[m]
        now = view.now
        c1, c2 = pl.cum[s], pl.cum[s + n]
        catch = (pl.preempt_s if run is not None else 0.0) + pl.cum[n][p] + pl.merge_s
        fin_pre = now + catch + c2[-1] - c2[p] + self.slack_ms / 1e3
        fin_cont = now + c1[-1] - c1[p]
        md = X.min_deadline
        if md >= fin_pre:
            return preempt(n, m)
        if md >= fin_cont:
            return HOLD
        keep = min((d for d in X.deadlines() if d >= fin_cont), default=INF)
        return preempt(n, m) if keep >= fin_pre else HOLD


@register
class Prema(Scheduler):
    """PREMA (Choi & Rhu, HPCA 2020), adapted to per-layer preemption of batches.

    Tasks: the current batch (running, or paused with nothing running) and, per model
    with queued requests, the batch its ``min(queued, cap)`` oldest would form. A
    request's token is the share of its SLO already spent, ``(now - arrival) / slo``;
    a task's token is its members' largest. Candidates are the tasks with a token of
    at least ``threshold`` times the largest token; among them the one with the
    shortest predicted remaining time (isolated, exit-blind, at its batch size, plus
    the preemption cost) runs. Switching away from the current batch preempts it
    without merging; it resumes when the NPU is free again. Decisions are taken at
    PREMA's scheduling points: arrivals, exits and batch completions.
    """
    name = "prema"
    work_conserving = True
    preemptive = True
    knob_spec = {"max_batch": MAX_BATCH,
                 "threshold": (0.5, lambda v: is_nonneg(v) and v <= 1, "a number from 0 to 1")}

    def decide(self, view):
        run, par = view.running, view.paused
        if run is not None and par is not None:
            return HOLD
        X = run if run is not None else par
        now, arr, slo = view.now, view.arrival, view.slo
        tasks = []                       # (token, remaining, model or -1 for X, n)
        if X is not None:
            pl = view.plans[X.model]
            c = pl.cum[X.size]
            tok = max((now - arr[r]) / slo[r] for r in X.rids())
            tasks.append((tok, c[-1] - c[X.pos], -1, 0))
        for m, q in enumerate(view.queues):
            if not q:
                continue
            n = min(len(q), self.batch_cap(view, m))
            tok = max((now - arr[r]) / slo[r] for r in islice(q, n))
            pl = view.plans[m]
            extra = pl.preempt_s if run is not None else 0.0
            tasks.append((tok, pl.cum[n][-1] + extra, m, n))
        if not tasks:
            return CONTINUE
        top = max(t[0] for t in tasks)
        cands = [t for t in tasks if t[0] >= self.threshold * top]
        best = min(cands, key=lambda t: (t[1], t[2] != -1))
        if best[2] == -1:
            return HOLD
        if X is None:
            return start(best[3], best[2])
        return preempt(best[3], best[2], merge=False)
