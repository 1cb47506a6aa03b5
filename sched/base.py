"""The scheduler interface, its decisions and the registry.

A scheduler sees what the hardware scheduler sees (the *view*, see
:class:`fluidnpu.sim.serving.simulator.Simulator`): the request FIFO per model
(request ids in arrival order, with ``view.arrival[rid]``, ``view.deadline[rid]``,
``view.slo[rid]``), the running batch and the paused batch (model, layer position,
size, deadlines; never the drawn exits), the per-model latency plans and exit
probabilities, and exit events (``on_exit``). It decides at layer boundaries.

Decisions are small tuples made by the helpers below:

* ``CONTINUE``: keep running the current batch (idle: resume the paused batch, or
  wait for the next arrival). Ask me again at the next boundary.
* ``HOLD``: like CONTINUE, but do not ask again until something changes (an
  arrival, an exit, a batch ends or merges).
* ``start(n, model)``: idle NPU: start a batch of the ``n`` oldest queued requests.
* ``preempt(n, model, merge=True)``: pause the running batch and run the ``n``
  oldest queued requests of ``model`` from layer 0; with ``merge`` they join the
  paused batch when they reach its layer (catch-up). Only one batch can be paused.
* ``wait(until)``: idle NPU: do nothing until ``until`` (seconds) or the next arrival.

Drops: ``view.drop(rid, reason)`` removes a queued request (recorded with the reason).
"""
from __future__ import annotations

import math

__all__ = ["Scheduler", "SchedulerError", "CONTINUE", "HOLD", "start", "preempt", "wait", "register", "make",
           "names", "in_order", "baselines", "knob_defaults", "REGISTRY"]

CONTINUE = ("continue",)
HOLD = ("hold",)


def start(n: int, model: int | None = None) -> tuple:
    return ("start", n, model)


def preempt(n: int, model: int | None = None, merge: bool = True) -> tuple:
    return ("preempt", n, model, merge)


def wait(until: float | None = None) -> tuple:
    return ("wait", until)


class SchedulerError(ValueError):
    """A scheduler name or knob is wrong, or a decision is invalid."""


class Scheduler:
    """Base class. Subclasses set ``name``, ``preemptive`` and ``knob_spec``.

    ``knob_spec`` maps knob name to ``(default, check, allowed)``: ``check(v)`` is true
    for a valid value, ``allowed`` describes the valid values for error messages.
    ``preemptive = False`` schedulers are asked only when no batch is running.
    ``work_conserving = True`` promises that where a decision has one work-conserving
    answer the scheduler gives it and keeps nothing from the call: with the NPU idle,
    nothing paused and exactly one request queued, ``start(1, its model)``; with the NPU
    idle, a batch paused and nothing queued, resume it; with a batch running and another
    paused (the hardware holds one: nothing can be preempted), HOLD. The simulator then skips those
    calls: a request that arrives at an idle NPU and leaves before the next arrival is
    served without asking, which makes light load several times faster to simulate.
    ``baseline = False`` marks the scheduler the comparison is about (fluid); the others
    are the baselines it is compared with.
    """
    name = "base"
    preemptive = False
    work_conserving = False
    baseline = True
    knob_spec: dict = {}

    def __init__(self, **knobs):
        unknown = set(knobs) - set(self.knob_spec)
        if unknown:
            raise SchedulerError(f"scheduler {self.name!r}: unknown knobs {sorted(unknown)}: "
                                 f"allowed {sorted(self.knob_spec) or 'none'}")
        self.knobs = {}
        for k, (default, check, allowed) in self.knob_spec.items():
            v = knobs.get(k, default)
            if not check(v):
                raise SchedulerError(f"scheduler {self.name!r}: knob {k} = {v!r}: must be {allowed}")
            self.knobs[k] = v
            setattr(self, k, v)

    def reset(self, view) -> None:
        """Called once before a run with the simulator view."""

    def decide(self, view) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_exit(self, view, batch, head: int, n_left: int) -> None:
        """Exit event: ``n_left`` samples of ``batch`` left at ``head``."""

    def on_batch_end(self, view, batch) -> None:
        """``batch`` ended (all its samples left)."""

    def batch_cap(self, view, model: int) -> int:
        """Largest batch for ``model``: the ``max_batch`` knob (if any) capped by the table's B_max."""
        b = view.plans[model].b_max
        mb = getattr(self, "max_batch", None)
        return b if mb is None else min(b, mb)

    def __repr__(self):
        kn = ", ".join(f"{k}={v!r}" for k, v in self.knobs.items())
        return f"{self.name}({kn})"


# knob checks ------------------------------------------------------------------------
def is_pos_int_or_none(v):
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def is_pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def is_nonneg(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def is_pos(v):
    return is_nonneg(v) and v > 0


def is_frac(v):
    return is_nonneg(v) and v < 1


def is_nonneg_or_none(v):
    return v is None or is_nonneg(v)


MAX_BATCH = (None, is_pos_int_or_none, "a positive integer or None (the table's B_max)")

REGISTRY: dict[str, type[Scheduler]] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, **knobs) -> Scheduler:
    """A new scheduler by registry name, e.g. ``make("dynamic", max_batch=8, max_delay_ms=2)``."""
    if isinstance(name, Scheduler):
        if knobs:
            raise SchedulerError(f"make({name!r}): knobs given for an already-built scheduler")
        return name
    if name not in REGISTRY:
        raise SchedulerError(f"scheduler = {name!r}: unknown; allowed {sorted(REGISTRY)}")
    return REGISTRY[name](**knobs)


def names() -> list[str]:
    """The registered schedulers' names, sorted."""
    return sorted(REGISTRY)


def in_order() -> tuple[str, ...]:
    """The registered schedulers' names in registration order (the order of tables and plots)."""
    return tuple(REGISTRY)


def baselines() -> tuple[str, ...]:
    """The registered baselines (every scheduler but fluid), in registration order."""
    return tuple(n for n, cls in REGISTRY.items() if cls.baseline)


def knob_defaults(name: str) -> dict:
    """Knob names and defaults of a registered scheduler (for grid tuning)."""
    if name not in REGISTRY:
        raise SchedulerError(f"scheduler = {name!r}: unknown; allowed {sorted(REGISTRY)}")
    return {k: d for k, (d, _, _) in REGISTRY[name].knob_spec.items()}
