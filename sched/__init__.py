"""fluidnpu.sched: serving schedulers (fcfs, dynamic, clipper, lazy, prema, fluid) and their registry.

``make(name, **knobs)`` builds one; ``names()`` lists them; ``knob_defaults(name)``
gives a scheduler's knobs for grid tuning. See :mod:`.base` for the interface.
"""
from .base import (CONTINUE, HOLD, REGISTRY, Scheduler, SchedulerError, knob_defaults, make, names, preempt,
                   register, start, wait)
from .simple import FCFS, Clipper, Dynamic
from .preemptive import Lazy, Prema
from .fluid import Fluid

__all__ = ["Scheduler", "SchedulerError", "CONTINUE", "HOLD", "start", "preempt", "wait", "register", "make",
           "names", "knob_defaults", "REGISTRY", "FCFS", "Dynamic", "Clipper", "Lazy", "Prema", "Fluid"]
