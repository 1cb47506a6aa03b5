"""The fluid scheduler: exit-aware and preemptive (Fluid Batching, Kouris et al., ICCAD 2022).

See docs/serving.md for the rule and its reasoning. It uses exit *probabilities*
only (never the drawn exits): every prediction comes from :mod:`.predict`.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import deque
from itertools import islice

from .base import CONTINUE, HOLD, MAX_BATCH, Scheduler, is_nonneg, register, preempt, start
from .predict import predictor

__all__ = ["Fluid"]


@register
class Fluid(Scheduler):
    """Exit-aware, slack-aware catch-up.

    Idle: start every queued request of the oldest model (up to the cap). At a layer
    boundary with requests of the current batch's model waiting (and no other batch
    paused), compare *continue* with *catch-up of n = min(queued, cap - size)* (the
    slots exits have freed) by an expected cost, all predicted from exit
    probabilities (the batch shrinks in expectation, layer by layer):

    * latency: expected remaining latency of the batch's members and the n
      candidates, plus ``rest_weight`` times the extra NPU work of the catch-up
      (versus serving the candidates later in a full batch) for every other request
      waiting;
    * SLO: ``miss_weight`` times the expected SLO misses (each weighted by its SLO
      budget, in seconds) of the members, the candidates and the next batch's worth
      of requests behind them. A request misses if it survives to an op predicted
      to end after its deadline, so slack and exit probabilities both count.

    Preempt if the catch-up's cost is lower. ``miss_weight = 0`` minimises expected
    latency alone. See docs/serving.md.
    """
    name = "fluid"
    work_conserving = True
    preemptive = True
    baseline = False
    knob_spec = {"max_batch": MAX_BATCH,
                 "miss_weight": (1.0, is_nonneg, "a number >= 0 (SLO budgets per expected miss)"),
                 "rest_weight": (1.0, is_nonneg, "a number >= 0")}

    def reset(self, view):
        self.pred = [predictor(pl) for pl in view.plans]
        self._cap = [self.batch_cap(view, m) for m in range(len(view.plans))]
        self._at_risk = False

    def decide(self, view):
        self._at_risk = False
        run, par = view.running, view.paused
        if run is not None and par is not None:
            return HOLD                          # the hardware holds one paused batch
        X = run if run is not None else par
        # fresh batches of the other models (of every model when nothing is running or paused)
        cands = []
        xm = -1 if X is None else X.model
        for m, q in enumerate(view.queues):
            if q and m != xm:
                cands.append((m, self.pred[m], 0, min(len(q), self._cap[m]), q))
        best = None
        if cands:                                # the fresh batch that should run first among them
            best = cands[0]
            for c in cands[1:]:
                if self._swap_gain(view, best, c, 0.0) > 0:
                    best = c
        if X is None:
            return CONTINUE if best is None else start(best[3], best[0])
        pre = view.plans[X.model].preempt_s if run is not None else 0.0
        if best is not None and self._swap_gain(view, self._job(view, X), best, pre) > 0:
            return preempt(best[3], best[0], merge=False)
        d = self._catchup(view, X, run)
        if d is HOLD and cands and self._at_risk:
            return CONTINUE                      # slack shrinks as time passes: ask again next boundary
        return d

    # -- cross-model preemption: exit-aware index and SLO slack ---------------------------
    # A job is (model, predictor, position, size, members): members is the model's queue
    # for a fresh batch (its first ``size`` requests) or the running/paused Batch.
    def _job(self, view, X):
        return (X.model, self.pred[X.model], X.pos, X.size, X)

    def _misses(self, view, job, delay):
        """Expected SLO misses of a job's members (weighted by SLO budget, s) if delayed by ``delay``."""
        m, P, p, s, src = job
        Mc = P.M[p][s]
        K = len(Mc) - 1
        a = P.alive
        ap = a[p]
        if ap <= 0:
            return 0.0
        now = view.now
        dl, slo = view.deadline, view.slo
        horizon = now + delay + Mc[-1]
        out = 0.0
        for r in (islice(src, s) if type(src) is deque else src.rids()):
            d = dl[r]
            if d >= horizon:
                continue
            rem = d - now
            if rem < 0:
                continue                         # missed whatever we do
            self._at_risk = True
            k = bisect_right(Mc, rem - delay) or 1
            if k <= K:
                w = slo[r] / ap
                out += a[p + k - 1] * w
                k0 = bisect_right(Mc, rem) or 1
                if k0 <= K:
                    out -= a[p + k0 - 1] * w
        return out

    def _swap_gain(self, view, A, B, pre):
        """Expected cost saved by running B's index block before A's (> 0: B first).

        Each job runs its index horizon: ``T`` seconds with ``e`` expected completions
        (``Predictor.gi``). Latency: A-first delays B's completions by T_A, B-first
        delays A's by T_B (+ the preemption cost). SLO: ``miss_weight`` times the
        expected misses (weighted by SLO budget) that each order adds to the other job.
        """
        _, PA, pa, sa, _ = A
        _, PB, pb, sb, _ = B
        _, _, TA, eA = PA.gi[pa][sa]
        _, _, TB, eB = PB.gi[pb][sb]
        TB += pre
        gain = eB * TA - eA * TB
        if self.miss_weight:
            gain += self.miss_weight * (self._misses(view, B, TA) - self._misses(view, A, TB))
        return gain

    # -- same-model catch-up into the slots that exits freed --------------------------------
    def _catchup(self, view, X, run):
        m, s, p = X.model, X.size, X.pos
        q = view.queues[m]
        nq = len(q)
        cap = self._cap[m]
        n = min(nq, cap - s)
        if n <= 0:
            return HOLD
        pl, P = view.plans[m], self.pred[m]
        now, a = view.now, P.alive
        ap = a[p]
        pre = pl.preempt_s if run is not None else 0.0
        Cn = pre + P.U[0][n][p] + pl.merge_s              # until the merge, expected
        s2 = min(cap, s + int(n * ap + 0.5))               # expected merged size
        erem, el = P.erem, P.el
        nb = min(nq, cap)
        free_c = erem[p][s]
        # extra NPU work of the catch-up versus serving the candidates later in a batch of nb
        dwork = Cn + erem[p][s2] - free_c - n * erem[0][nb] / nb
        # expected latency (relative to now) of members + candidates, and the rest's delay
        l_cont = s * el[p][s] + n * (free_c + el[0][nb])
        l_pre = s * (Cn + el[p][s2]) + n * (pre * (1 - ap) + P.elpre[n][p] + ap * (Cn + el[p][s2])) \
            + self.rest_weight * (view.n_queued - n) * dwork
        if not self.miss_weight:
            return preempt(n, m) if l_pre < l_cont else HOLD
        # expected deadline misses (weighted by SLO budget): members of X ...
        Mc, Mp = P.M[p][s], P.M[p][s2]
        K = len(Mc) - 1
        miss_c = miss_p = 0.0
        thr = now + max(Mc[-1], Cn + Mp[-1])
        dl, slo = view.deadline, view.slo
        inv = 1.0 / ap if ap > 0 else 0.0
        for rid in X.rids():
            d = dl[rid]
            if d >= thr:
                continue
            r = d - now
            w = slo[rid] * inv
            k = bisect_right(Mc, r) or 1
            if k <= K:
                miss_c += a[p + k - 1] * w
            k = bisect_right(Mp, r - Cn) or 1
            if k <= K:
                miss_p += a[p + k - 1] * w
        # ... the candidates (continue: they start a batch of nb when X drains) ...
        M0n, M0b = P.M[0][n], P.M[0][nb]
        N = len(M0b) - 1
        end_catch = pre + M0n[p]
        thr = now + max(free_c + M0b[-1], Cn + Mp[-1])
        for rid in islice(q, n):
            d = dl[rid]
            if d >= thr:
                continue
            r = d - now
            w = slo[rid]
            k = bisect_right(M0b, r - free_c) or 1
            if k <= N:
                miss_c += a[k - 1] * w
            if r < end_catch:
                miss_p += a[(bisect_right(M0n, r - pre, 0, p + 1) or 1) - 1] * w
            else:
                k = bisect_right(Mp, r - Cn) or 1
                if k <= K:
                    miss_p += a[p + k - 1] * w
        # ... and the next batch's worth of requests behind them
        free_p = Cn + erem[p][s2]
        nr = min(nq - n, cap)
        if nr:
            Mr = P.M[0][nr]
            nb2 = min(nq - nb, cap)
            M2 = P.M[0][nb2] if nb2 else Mr
            free_c2 = free_c + erem[0][nb]
            for i, rid in enumerate(islice(q, n, n + nr)):
                d = dl[rid] - now
                w = slo[rid]
                if n + i < nb:
                    k = bisect_right(M0b, d - free_c) or 1
                else:
                    k = bisect_right(M2, d - free_c2) or 1
                if k <= N:
                    miss_c += a[k - 1] * w
                k = bisect_right(Mr, d - free_p) or 1
                if k <= N:
                    miss_p += a[k - 1] * w
        if l_pre + self.miss_weight * miss_p < l_cont + self.miss_weight * miss_c:
            return preempt(n, m)
        return HOLD
