"""The host: the scheduler's side of an NPU with a Fluid Batching Engine.

A :class:`Host` holds the request queue, runs a scheduler from :mod:`fluidnpu.sched`
(the same objects as the serving simulator) and is the *view* it reads (it is a
:class:`~fluidnpu.sim.serving.simulator.Simulator`, so every attribute a scheduler
uses is there). Something that knows the FBE's timing drives it, in cycle order:
:class:`~.engine.FbeEngine` (the serving simulator's FBE mode, from the cycle model)
or the cocotb bench (:mod:`.tb`, from the RTL). Both call the same methods with the
same cycles when the model is exact, which is what the co-simulation checks.

It follows the serving simulator's rules (docs/serving.md) where the FBE allows,
and the FBE's where they differ (docs/cosim.md): a catch-up always merges; a
catch-up batch that empties resumes the paused batch by itself; after a merge no
decision until the merged batch has run a backbone layer; the scheduler is asked at
the FBE's decision points only.
"""
from __future__ import annotations

import math

import numpy as np

from ..serving.simulator import DONE, DROPPED, QUEUED, RUNNING, SimulationError, Simulator

__all__ = ["Host", "CosimError"]


class CosimError(SimulationError):
    """A decision the FBE cannot carry out, or the hardware and the host disagree."""


class Host(Simulator):
    """Scheduler, queue and per-request records; times are integer cycles of ``clock_hz``.

    ``arrival_cycle[r]``: request ``r`` joins the queue at that cycle. ``op_of[entry]``:
    the op index of each program entry (:class:`~.timing.FbeTiming`).
    """

    def __init__(self, requests, plans, scheduler, *, clock_hz: float, arrival_cycle, op_of, op_macs=None,
                 warmup_t: float = 0.0, queue_capacity=None):
        super().__init__(requests, plans, scheduler, warmup_t=warmup_t, queue_capacity=queue_capacity)
        if len(plans) != 1:
            raise CosimError(f"the FBE runs one network program; the scenario has {len(plans)} models "
                             f"({', '.join(p.name for p in plans)})")
        self.f = float(clock_hz)
        self.acyc = [int(a) for a in arrival_cycle]
        if any(b < a for a, b in zip(self.acyc, self.acyc[1:])):
            raise CosimError("arrival cycles must be sorted")
        self.op_of = list(op_of)
        self.op_macs = list(op_macs) if op_macs is not None else [0] * (max(self.op_of) + 1)
        self.finish_cycle = [-1] * self.n
        self.start_cycle = [-1] * self.n
        self.need = True
        self.wake: int | None = None      # idle: consult again at this cycle (scheduler's wait)
        self.last = -1                     # cycle of the last call (calls come in cycle order)
        self.busy_since: int | None = None
        self.busy_cycles = 0
        self.busy_w_cycles = 0
        self.trace: list[tuple] = []       # (cycle, what, detail): the host's view of the run
        self.preemptive = bool(scheduler.preemptive)
        sched = scheduler
        sched.reset(self)
        from fluidnpu.sched.base import Scheduler
        self._hook_exit = type(sched).on_exit is not Scheduler.on_exit
        self._hook_end = type(sched).on_batch_end is not Scheduler.on_batch_end

    # -- bookkeeping -------------------------------------------------------------------------
    def _at(self, c: int, what: str):
        if c < self.last:
            raise CosimError(f"{what} at cycle {c} after a call at cycle {self.last}: calls must come in cycle order")
        self.last = c
        self.now = c / self.f
        nxt, N = self._next, self.n
        if nxt < N and self.acyc[nxt] <= c:
            while nxt < N and self.acyc[nxt] <= c:
                nxt += 1
            self._next = self._admit_upto(nxt)
            self.need = True

    def _admit_upto(self, stop):
        cap, state = self.cap, self.state
        for r in range(self._next, stop):
            if cap is not None and self.n_queued >= cap:
                state[r] = DROPPED
                self.drop_reason[r] = "queue_full"
            else:
                self.queues[self.model_of[r]].append(r)
                state[r] = QUEUED
                self.n_queued += 1
        return stop

    def _fail(self, msg):
        raise CosimError(f"scheduler {self.scheduler!r} at cycle {self.last}: {msg}")

    def next_arrival(self) -> int | None:
        return self.acyc[self._next] if self._next < self.n else None

    def next_consult(self) -> int | None:
        """Idle NPU: the next cycle at which the host wants to decide (an arrival or a wait)."""
        a = self.next_arrival()
        w = self.wake
        if a is None:
            return w
        return a if w is None else min(a, w)

    def _begin(self, n: int, c: int, merge_into=None):
        m = 0
        q = self.queues[m]
        pl = self.plans[m]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= min(len(q), pl.b_max):
            self._fail(f"batch of n = {n!r}: must be from 1 to min(queued {len(q)}, B_max {pl.b_max})")
        b = self._take(m, n, self.now)
        for r in b.rids():
            self.start_cycle[r] = c
        return b

    # -- decisions ---------------------------------------------------------------------------
    def decide_idle(self, c: int) -> list[int]:
        """The FBE is idle at cycle ``c``: the requests (oldest first) to start a batch with,
        or [] to stay idle."""
        self._at(c, "idle decision")
        self.wake = None
        if self.n_queued == 0:
            return []
        d = self.scheduler.decide(self)
        k = d[0]
        if k == "start":
            if d[2] not in (None, 0):
                self._fail(f"start(model={d[2]!r}): the FBE runs model 0 only")
            b = self._begin(d[1], c)
            self.running = b
            self.busy_since = c
            self.need = True
            self.trace.append((c, "start", b.size))
            return b.rids()
        if k == "preempt":
            self._fail("preempt with no running batch: use start(...)")
        if k in ("continue", "hold"):
            if self.n_queued and self.next_arrival() is None:
                self._fail(f"left {self.n_queued} requests queued with no arrivals to come")
            return []
        if k == "wait":
            u = math.inf if d[1] is None else d[1]
            if u <= self.now:
                self._fail(f"wait(until={d[1]!r}): must be later than now")
            if u < math.inf:
                self.wake = max(c + 1, math.ceil(u * self.f - 1e-6))
            elif self.n_queued and self.next_arrival() is None:
                self._fail(f"left {self.n_queued} requests queued with no arrivals to come")
            return []
        self._fail(f"unknown decision {d!r}")

    def decide_boundary(self, c: int, entry: int) -> list[int]:
        """The main batch is at entry ``entry``'s decision point at cycle ``c``: the requests
        to catch up (they merge at this entry), or [] to continue."""
        self._at(c, "boundary decision")
        run = self.running
        if run is None or self.paused is not None:
            raise CosimError(f"cycle {c}: a decision point with running={run}, paused={self.paused}: "
                             f"the FBE asks only for a running main batch")
        run.pos = self.op_of[entry]
        if not (self.preemptive and self.need and self.n_queued):
            return []
        d = self.scheduler.decide(self)
        k = d[0]
        if k == "hold":
            self.need = False
            return []
        if k == "continue":
            return []
        if k != "preempt":
            self._fail(f"{k}: not allowed while a batch is running (use CONTINUE, HOLD, preempt)")
        n, m, merge = d[1], d[2], d[3]
        if m not in (None, run.model):
            self._fail(f"preempt(model={m}): the FBE runs model {run.model} only")
        if not merge:
            self._fail("preempt(merge=False): the FBE merges every catch-up into the paused batch "
                       "(schedulers that switch batches without merging need another engine)")
        if isinstance(n, int) and not isinstance(n, bool) and n + run.size > self.plans[run.model].b_max:
            self._fail(f"preempt n = {n}: merged batch {n} + {run.size} would exceed B_max "
                       f"{self.plans[run.model].b_max}")
        new = self._begin(n, c)
        new.merge_at = run.pos
        self.paused, self.running = run, new
        self.preemptions += 1
        self.trace.append((c, "catchup", new.size))
        return new.rids()

    # -- what the FBE reports ----------------------------------------------------------------
    def layer_start(self, c: int, entry: int, b: int):
        """An entry started for ``b`` samples (statistics: ops per batch size, MACs)."""
        self._at(c, "layer start")
        i = self.op_of[entry]
        if entry == 0 or self.op_of[entry - 1] != i:
            if c / self.f >= self.warmup_t:
                self.op_hist[b] += 1
                self.macs_w += self.op_macs[i] * b

    def result(self, c: int, rid: int, head: int):
        """Request ``rid`` left at exit ``head`` (its result was written at cycle ``c``)."""
        self._at(c, "result")
        run = self.running
        if not 0 <= rid < self.n or self.state[rid] != RUNNING or run is None:
            raise CosimError(f"cycle {c}: result for request {rid}, which is not running")
        g = run._groups
        if rid not in g[self._exit[rid]]:
            raise CosimError(f"cycle {c}: request {rid} is not in the running batch {run}")
        if head != self._exit[rid]:
            raise CosimError(f"cycle {c}: request {rid} left at exit {head}; its reference exit is {self._exit[rid]}")
        g[head].remove(rid)
        run._refresh()
        run.size -= 1
        self.finish_cycle[rid] = c
        self.finish[rid] = c / self.f
        self.exit_taken[rid] = head
        self.state[rid] = DONE

    def exit_test(self, c: int, entry: int, head: int, n_left: int):
        """The exit test after ``entry`` ended; ``n_left`` samples left at ``head``."""
        self._at(c, "exit test")
        run = self.running
        run.pos = self.op_of[entry] + 1
        run._refresh()
        if n_left:
            self.need = True
            if self._hook_exit:
                self.scheduler.on_exit(self, run, head, n_left)
        if run.size == 0:
            self.running = None
            self.need = True
            if self._hook_end:
                self.scheduler.on_batch_end(self, run)

    def merged(self, c: int):
        """The catch-up batch reached the paused batch's entry and joined it."""
        self._at(c, "merge")
        run, par = self.running, self.paused
        if run is None or par is None:
            raise CosimError(f"cycle {c}: a merge with running={run}, paused={par}")
        par.absorb(run)
        self.running, self.paused = par, None
        self.merges += 1
        self.need = True
        self.trace.append((c, "merge", par.size))

    def resumed(self, c: int):
        """The catch-up batch emptied at an exit; the paused batch runs again."""
        self._at(c, "resume")
        if self.paused is None or self.running is not None:
            raise CosimError(f"cycle {c}: a resume with running={self.running}, paused={self.paused}")
        self.running, self.paused = self.paused, None
        self.need = True
        self.trace.append((c, "resume", self.running.size))

    def idle(self, c: int):
        """The main batch emptied; the FBE is idle from cycle ``c``."""
        self._at(c, "idle")
        if self.running is not None or self.paused is not None:
            raise CosimError(f"cycle {c}: idle with running={self.running}, paused={self.paused}")
        self.need = True
        if self.busy_since is not None:
            self._busy_cycles(self.busy_since, c)
            self.busy_since = None
        self.trace.append((c, "idle", 0))

    def _busy_cycles(self, a, b):
        self.busy_cycles += b - a
        w = math.ceil(self.warmup_t * self.f - 1e-6)
        if b > w:
            self.busy_w_cycles += b - max(a, w)

    def finish_run(self, c: int):
        """Every request is done or dropped; ``c`` is the last cycle."""
        st = np.frombuffer(bytes(self.state), dtype=np.uint8)
        bad = np.flatnonzero((st != DONE) & (st != DROPPED))
        if bad.size:
            raise CosimError(f"{bad.size} requests neither finished nor dropped (first {bad[:5].tolist()})")
        self.t_end = c / self.f
        self.busy_w = self.busy_w_cycles / self.f
        self.busy_total = self.busy_cycles / self.f
