"""Cycle costs of the Fluid Batching Engine around the core's GEMMs, equal to the RTL's
(hw/fbe.py, hw/exit_unit.py) under the memory model's contract with no random stalls
and ``interval`` no longer than the FBE's own gaps (see docs/fbe.md, "Timing").

A program entry run by a batch of ``B`` samples goes, in FBE states::

    BOUND, DEC, POL (layer_start event), GATH x B,
    per GEMM command: CMD (accepted) + the core's cycles (sim.cycle_model.layer_cycles),
    LDONE (layer_done event), then either NEXT (no exit test) or, per sample, the exit
    unit (EXIT .. EXNEXT), the exit event and NEXT; then BOUND of the next entry.
"""
from __future__ import annotations

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.runner import MemTiming

from .cycle_model import layer_cycles

__all__ = ["ENTRY_PRE", "ENTRY_POST", "EXIT_POST", "commands", "entry_compute_cycles",
           "exit_sample_cycles", "exit_leave_extra", "exit_test_cycles", "entry_cycles", "REQ_CYCLES", "alloc_cycles",
           "merge_cycles", "RESUME_CYCLES", "logit_beats"]

#: BOUND, DEC, POL before the gather loop.
ENTRY_PRE = 3
#: LDONE and NEXT after the last command when no exit test follows.
ENTRY_POST = 2
#: LDONE before the first sample's exit test; after the last one EXNEXT's event and NEXT
#: are part of the per-sample cost, so the entry ends one cycle (NEXT) later.
EXIT_POST = 2
#: a preempt request: REQ (decide, event) before ALLOC or AFTER_REQ.
REQ_CYCLES = 1
#: a catch-up that emptied: the resume event takes one BOUND cycle.
RESUME_CYCLES = 1


def logit_beats(cfg: HwConfig, classes: int) -> int:
    return -(-4 * classes // cfg.mem_bytes)


def commands(b: int, br: int) -> list[int]:
    """Samples per GEMM command of a batch of ``b`` under B_R = ``br`` (0: the whole batch)."""
    if br <= 0 or br >= b:
        return [b]
    out = [br] * (b // br)
    if b % br:
        out.append(b % br)
    return out


def entry_compute_cycles(cfg: HwConfig, r: int, p: int, c: int, b: int, policy, *, bias: bool,
                         out_mode: int, mem: MemTiming) -> int:
    """Gather loop plus the GEMM commands (each: CMD + the core's cycles)."""
    br, bp, k = policy
    return b + sum(1 + layer_cycles(cfg, n * r, p, c, bp=bp, k=k, bias=bias, out_mode=out_mode, mem=mem)
                   for n in commands(b, br))


def exit_sample_cycles(cfg: HwConfig, classes: int, exits: bool, mem: MemTiming) -> int:
    """One sample through the exit unit: from EXIT to the next sample's EXIT (or to the
    cycle after the exit event)."""
    nb = logit_beats(cfg, classes)
    L, I = mem.latency, mem.interval
    Lw = mem.wr_latency if mem.wr_latency is not None else L
    r_last = 1 + (nb - 1) * I
    if not exits:
        done = r_last + L + 2
    else:
        w_last = r_last + L + 2 + (nb - 1) * I
        done = w_last + Lw + 2
    return done + 3


def exit_leave_extra(cfg: HwConfig, classes: int, mem: MemTiming) -> int:
    """Extra cycles of a sample that leaves at an exit test over one that stays."""
    return exit_sample_cycles(cfg, classes, True, mem) - exit_sample_cycles(cfg, classes, False, mem)


def exit_test_cycles(cfg: HwConfig, classes: int, b: int, n_exit: int, mem: MemTiming) -> int:
    return (n_exit * exit_sample_cycles(cfg, classes, True, mem)
            + (b - n_exit) * exit_sample_cycles(cfg, classes, False, mem))


def entry_cycles(cfg: HwConfig, r: int, p: int, c: int, b: int, policy, *, bias: bool, out_mode: int,
                 mem: MemTiming, exit_test: bool = False, n_exit: int = 0) -> int:
    """BOUND of this entry to BOUND of the next, with no preempt request in between."""
    cyc = ENTRY_PRE + entry_compute_cycles(cfg, r, p, c, b, policy, bias=bias, out_mode=out_mode, mem=mem)
    if not exit_test:
        return cyc + ENTRY_POST
    return cyc + EXIT_POST + exit_test_cycles(cfg, c, b, n_exit, mem)


def alloc_cycles(n: int) -> int:
    """ALLOC: one cycle per admitted sample and the final check."""
    return n + 1


def merge_cycles(n: int) -> int:
    """MERGE: one cycle per catch-up sample and the event cycle."""
    return n + 1


def out_mode_of(mult) -> int:
    return OUT_RAW if mult is None else OUT_REQUANT
