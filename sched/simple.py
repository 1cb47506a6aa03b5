"""Non-preemptive baselines: batch-1 FCFS, Triton's dynamic batcher, Clipper's AIMD batching.

They form a batch when the NPU is idle and run it to completion (the batch shrinks
as samples exit; new arrivals wait for the whole batch to drain).
"""
from __future__ import annotations

from itertools import islice

from .base import (CONTINUE, MAX_BATCH, Scheduler, is_frac, is_nonneg, is_nonneg_or_none, is_pos, is_pos_int,
                   register, start, wait)

__all__ = ["FCFS", "Dynamic", "Clipper"]

INF = float("inf")


@register
class FCFS(Scheduler):
    """Batch size 1, oldest request first, run to completion."""
    name = "fcfs"
    work_conserving = True

    def decide(self, view):
        m = view.oldest_model()
        return CONTINUE if m < 0 else start(1, m)


@register
class Dynamic(Scheduler):
    """Triton's dynamic batcher.

    A batch of model ``m`` starts when ``max_batch`` requests of ``m`` wait, or when
    the oldest of them has waited ``max_delay_ms``; otherwise the NPU waits. With
    ``timeout_ms``, requests that waited longer are dropped (``timeout``), like
    Triton's queue policy with ``REJECT``.
    """
    name = "dynamic"
    knob_spec = {"max_batch": MAX_BATCH,
                 "max_delay_ms": (1.0, is_nonneg, "a number of milliseconds >= 0"),
                 "timeout_ms": (None, is_nonneg_or_none, "None or a number of milliseconds >= 0")}

    def reset(self, view):
        self._caps = [self.batch_cap(view, m) for m in range(len(view.plans))]
        self._delay = self.max_delay_ms / 1e3

    def decide(self, view):
        now, arr = view.now, view.arrival
        if self.timeout_ms is not None:
            lim = self.timeout_ms / 1e3
            for q in view.queues:
                while q and now - arr[q[0]] > lim:
                    view.drop(q[0], "timeout")
        delay, caps = self._delay, self._caps
        best, best_t, due_min = -1, INF, INF
        for m, q in enumerate(view.queues):
            if q:
                a0 = arr[q[0]]
                due = a0 + delay
                if len(q) >= caps[m] or now >= due - 1e-12:
                    if a0 < best_t:                  # ready: the oldest first
                        best, best_t = m, a0
                elif due < due_min:
                    due_min = due
        if best >= 0:
            n = len(view.queues[best])
            return start(n if n < caps[best] else caps[best], best)
        return CONTINUE if due_min == INF else wait(due_min)


@register
class Clipper(Scheduler):
    """Clipper's adaptive batching: additive increase, multiplicative decrease (AIMD).

    Per model, the batch size grows by ``step`` after every batch whose processing
    time stayed within ``slo_fraction`` of the tightest SLO in it, and shrinks by the
    factor ``1 - backoff`` after one that did not. A batch takes up to that many of
    the oldest queued requests, without waiting.
    """
    name = "clipper"
    knob_spec = {"max_batch": MAX_BATCH,
                 "step": (1, is_pos_int, "a positive integer"),
                 "backoff": (0.1, lambda v: is_frac(v) and v > 0, "a fraction in (0, 1)"),
                 "slo_fraction": (1.0, is_pos, "a positive number"),
                 "start_batch": (1, is_pos_int, "a positive integer")}

    def reset(self, view):
        self._caps = [float(self.batch_cap(view, m)) for m in range(len(view.plans))]
        self.bs = [min(float(self.start_batch), c) for c in self._caps]
        self._slo = None
        self.history = []      # (time, model, batch size limit) after each adjustment

    def decide(self, view):
        m = view.oldest_model()
        if m < 0:
            return CONTINUE
        q = view.queues[m]
        n = max(1, min(len(q), int(self.bs[m])))
        slo = view.slo
        self._slo = slo[q[0]] if n == 1 else min(slo[r] for r in islice(q, n))
        return start(n, m)

    def on_batch_end(self, view, batch):
        m = batch.model
        if view.now - batch.t_start <= self.slo_fraction * self._slo:
            self.bs[m] = min(self._caps[m], self.bs[m] + self.step)
        else:
            self.bs[m] = max(1.0, self.bs[m] * (1.0 - self.backoff))
        self.history.append((view.now, m, self.bs[m]))
