"""fluidnpu.sched: serving schedulers (fcfs, dynamic, clipper, lazy, prema, fluid) and their registry.

``make(name, **knobs)`` builds one; ``names()`` lists them; ``knob_defaults(name)``
gives a scheduler's knobs for grid tuning. See :mod:`.base` for the interface.

``SCHEDULERS`` (every scheduler, in the order of tables and plots) and ``BASELINES``
(all but fluid) are the one list of them; the CLI's choices and the comparison use it.
"""
from .base import (CONTINUE, HOLD, REGISTRY, Scheduler, SchedulerError, baselines, in_order, knob_defaults,
                   make, names, preempt, register, start, wait)
from .simple import FCFS, Clipper, Dynamic
from .preemptive import Lazy, Prema
from .fluid import Fluid

#: the registered schedulers: the baselines, then fluid
SCHEDULERS = in_order()
#: every scheduler but fluid
BASELINES = baselines()

__all__ = ["Scheduler", "SchedulerError", "CONTINUE", "HOLD", "start", "preempt", "wait", "register", "make",
           "names", "in_order", "baselines", "knob_defaults", "REGISTRY", "SCHEDULERS", "BASELINES", "FCFS",
           "Dynamic", "Clipper", "Lazy", "Prema", "Fluid"]
