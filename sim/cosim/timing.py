"""Cycle-exact timing of one network program on the FBE, as the co-simulation's host drives it.

The host protocol (docs/cosim.md): the FBE runs in step mode; the host answers a
decision in the cycle after it saw ``status.decide``; a start or a catch-up of ``n``
requests first stages those ``n`` samples on ``admit`` (one per cycle) and then offers
``preempt = n``. Costs of the FBE itself come from :mod:`fluidnpu.sim.fbe_model` (equal
to the RTL, tested there); this module adds the protocol and groups program entries
into the serving simulator's *ops* (backbone layers and exit heads).
"""
from __future__ import annotations

import numpy as np

from fluidnpu.hw.fbe_layout import SRC_PREV
from fluidnpu.hw.runner import MemTiming

from ..fbe_model import (ENTRY_POST, ENTRY_PRE, EXIT_POST, REQ_CYCLES, RESUME_CYCLES, alloc_cycles,
                         entry_compute_cycles, exit_sample_cycles, merge_cycles)
from ..latency import LatencyTable
from ..network import NetworkProgram
from ..serving.plan import op_sequence

__all__ = ["FbeTiming", "ANSWER_CYCLES", "ADMIT_CYCLES"]

#: the host answers in the cycle after it saw the decision
ANSWER_CYCLES = 1
#: the host stages one chosen sample per cycle before it offers the preempt
ADMIT_CYCLES = 1


class FbeTiming:
    """Per-entry cycle costs of ``prog`` under ``policies`` (``{(b, lid): (B_R, B_P, k)}``)
    and the memory timing ``mem``, and the entry -> op grouping.

    Times are FBE states (docs/fbe.md): an entry's boundary is its BOUND cycle; its
    DEC follows; a *decision point* is a DEC where the FBE asks (main batch, no merge
    hold, the entry does not read the previous entry's output).
    """

    def __init__(self, prog: NetworkProgram, policies=None, mem: MemTiming = MemTiming()):
        self.prog, self.cfg, self.mem = prog, prog.cfg, mem
        self.policies = dict(policies or {})
        ents = prog.entries
        self.n_entries = len(ents)
        self.src = [e.src for e in ents]
        self.backbone = [bool(e.backbone) for e in ents]
        self.exit_id = [e.exit_id for e in ents]
        self.classes = [e.layer.c for e in ents]
        # op index of each entry: a backbone layer is one op, a head's entries are one op
        op, ops = [], -1
        for e in ents:
            if e.backbone or e.src != SRC_PREV:
                ops += 1
            op.append(ops)
        self.op_of = op
        self.n_ops = ops + 1
        self.first_entry = [op.index(i) for i in range(self.n_ops)]
        bm = self.cfg.b_max
        comp = np.zeros((bm + 1, self.n_entries), dtype=np.int64)
        for b in range(1, bm + 1):
            for i, e in enumerate(ents):
                L = e.layer
                comp[b, i] = entry_compute_cycles(self.cfg, L.r, L.p, L.c, b, self.policy(b, e.lid), bias=e.b_addr != 0,
                                                  out_mode=e.out_mode, mem=mem)
        self.compute = comp
        self.exit_stay = [exit_sample_cycles(self.cfg, c, False, mem) if x is not None else 0
                          for c, x in zip(self.classes, self.exit_id)]
        self.exit_leave = [exit_sample_cycles(self.cfg, c, True, mem) if x is not None else 0
                           for c, x in zip(self.classes, self.exit_id)]

    def policy(self, b: int, lid: int):
        br, bp, k = self.policies.get((b, lid), (0, 1, 1))
        return (br if br < b else 0, bp, k)

    def asks(self, entry: int) -> bool:
        """The entry's DEC is a decision point (for the main batch without a merge hold)."""
        return self.src[entry] != SRC_PREV

    # -- the host protocol around the FBE's REQ / ALLOC ----------------------------------------
    @staticmethod
    def start_bound(d: int, n: int) -> int:
        """BOUND cycle of the new batch's first entry for a start / catch-up of ``n``
        decided at cycle ``d``: ``n`` admit cycles, the preempt offered (seen by IDLE / DEC),
        REQ, ALLOC."""
        offered = d + ANSWER_CYCLES + ADMIT_CYCLES * n
        return offered + REQ_CYCLES + alloc_cycles(n) + 1

    @staticmethod
    def merge_bound(bound: int, n: int) -> int:
        """BOUND after merging a catch-up of ``n`` samples that reached BOUND at ``bound``."""
        return bound + merge_cycles(n) + 1

    @staticmethod
    def resume_bound(bound: int) -> int:
        return bound + RESUME_CYCLES

    # -- a latency table for the schedulers' predictions --------------------------------------
    def entry_cycles(self, entry: int, b: int, n_exit: int = 0) -> int:
        """BOUND to BOUND of ``entry`` for a batch of ``b`` with ``n_exit`` leaving, in step
        mode with an immediate "continue" at decision points."""
        cyc = ENTRY_PRE + int(self.compute[b, entry]) + (ANSWER_CYCLES if self.asks(entry) else 0)
        if self.exit_id[entry] is None:
            return cyc + ENTRY_POST
        return cyc + EXIT_POST + n_exit * self.exit_leave[entry] + (b - n_exit) * self.exit_stay[entry]

    def op_cycles(self, op: int, b: int) -> int:
        """An op for a batch of ``b``: nobody leaves at a head, everyone at the final layer."""
        out = 0
        for i in range(self.first_entry[op], self.n_entries):
            if self.op_of[i] != op:
                break
            final = self.prog.entries[i].final
            out += self.entry_cycles(i, b, b if final else 0)
        return out

    def _head_exit_entries(self) -> list[int]:
        """Per head (exit id order), the entry whose exit test it is."""
        at = {x: i for i, x in enumerate(self.exit_id) if x is not None}
        return [at[h] for h in range(len(self.prog.model.exits))]

    def latency_table(self) -> LatencyTable:
        """The serving simulator's table for this program (what the schedulers predict with)."""
        model = self.prog.model
        bm = self.cfg.b_max
        kinds = op_sequence(model)
        lc = np.zeros((bm + 1, len(model.layers)), dtype=np.int64)
        hc = np.zeros((bm + 1, len(model.exits)), dtype=np.int64)
        for b in range(1, bm + 1):
            for op, (kind, j) in enumerate(kinds):
                (lc if kind == "layer" else hc)[b, j] = self.op_cycles(op, b)
        return LatencyTable.for_model(model, hardware="fbe", clock_mhz=self.cfg.clock_mhz, layer_cycles=lc,
                                      head_cycles=hc, peak_macs_per_cycle=self.cfg.lanes,
                                      exit_leave_cycles=tuple(self.exit_leave[i] - self.exit_stay[i]
                                                              for i in self._head_exit_entries()),
                                      preempt_cycles=self.start_bound(0, 1) - 1, merge_cycles=merge_cycles(1) + 1,
                                      source=f"FBE step-mode timing (sim.cosim.timing), {self.cfg.key()}, "
                                             f"memory latency {self.mem.latency}")

