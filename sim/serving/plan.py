"""Per-model execution plan (op sequence and its latencies) and the batch record."""
from __future__ import annotations

import numpy as np

from ..latency import LatencyTable
from ..workloads.model import EEModel

__all__ = ["ModelPlan", "Batch", "op_sequence"]


def op_sequence(model: EEModel) -> list[tuple[str, int]]:
    """The ops of ``model`` in execution order: ``("layer", l)``, with ``("head", h)`` right
    after layer ``exits[h].after``."""
    head_at = {e.after: h for h, e in enumerate(model.exits)}
    ops = []
    for l in range(len(model.layers)):
        ops.append(("layer", l))
        if l in head_at:
            ops.append(("head", head_at[l]))
    return ops


class ModelPlan:
    """A model laid out as a sequence of *ops* (backbone layers and exit heads).

    Op order: layer 0, 1, ..., with head ``h`` right after layer ``exits[h].after``.
    A batch's *position* ``pos`` is the number of ops it has finished. Public fields
    (read by schedulers):

    * ``lat[b, i]``: seconds to run op ``i`` for a batch of ``b`` (row 0 = 0);
      ``cum[b][i]``: seconds of ops ``0..i-1`` (Python lists, for speed).
    * ``op_exit[i]``: exit index taken after op ``i`` (heads, and the final layer =
      ``n_heads``), else -1. ``alive[i]``: probability that a sample reaches op ``i``;
      ``exit_at[i]``: probability that it leaves right after op ``i``.
    * ``leave_s[h]``: seconds each sample leaving at exit ``h`` adds after the op (the
      table's ``exit_leave_cycles``; 0 for the final exit, whose cycles count everyone
      leaving).
    * ``b_max``, ``preempt_s``, ``merge_s``, ``iso_s`` (batch-1 full-network latency
      on this table), ``slo_base_s`` (the SLO base from the reference table).
    """

    def __init__(self, index: int, model: EEModel, table: LatencyTable, slo_base_s: float):
        table.check_model(model)
        self.index, self.model, self.table = index, model, table
        self.name = model.name
        nh = len(model.exits)
        self.ops = ops = op_sequence(model)
        self.n_ops = n = len(ops)
        self.n_exits = nh + 1
        self.b_max = table.b_max
        cyc = np.zeros((table.b_max + 1, n), dtype=np.int64)
        macs = np.zeros(n, dtype=np.int64)
        op_exit = [-1] * n
        for i, (kind, j) in enumerate(ops):
            if kind == "layer":
                cyc[:, i] = table.layer_cycles[:, j]
                macs[i] = model.layers[j].macs
                if j == len(model.layers) - 1:
                    op_exit[i] = nh
            else:
                cyc[:, i] = table.head_cycles[:, j]
                macs[i] = sum(L.macs for L in model.exits[j].layers)
                op_exit[i] = j
        self.cycles = cyc
        self.lat = cyc / (table.clock_mhz * 1e6)
        self.cum = [[0.0] + np.cumsum(row).tolist() for row in self.lat]
        self.op_macs = macs
        self.cum_macs = [0] + np.cumsum(macs).tolist()
        self.op_exit = op_exit
        nxt = [n - 1] * n
        k = n - 1
        for i in range(n - 1, -1, -1):
            if op_exit[i] >= 0:
                k = i
            nxt[i] = k
        self.next_exit = nxt
        probs = np.asarray(model.exit_probs, dtype=float)
        probs = probs / probs.sum()
        exit_at = np.zeros(n)
        for i, h in enumerate(op_exit):
            if h >= 0:
                exit_at[i] = probs[h]
        self.exit_at = exit_at
        self.alive = np.clip(1.0 - np.concatenate(([0.0], np.cumsum(exit_at))), 0.0, 1.0)
        self.alive[-1] = 0.0
        self.exit_op = [i for i in range(n) if op_exit[i] >= 0]   # op index of exit h
        self.leave_s = [c / (table.clock_mhz * 1e6) for c in table.exit_leave_cycles] + [0.0]
        self.preempt_s = table.preempt_cycles / (table.clock_mhz * 1e6)
        self.merge_s = table.merge_cycles / (table.clock_mhz * 1e6)
        self.iso_s = table.batch1_latency_s()
        self.slo_base_s = float(slo_base_s)


class Batch:
    """A batch on the NPU: running, paused or catching up.

    Public: ``id``, ``model``, ``pos`` (ops done), ``size``, ``n0`` (size at start),
    ``t_start``, ``min_deadline``, ``merge_at`` (pos of the paused batch it will merge
    into, or -1), ``rids()``, ``deadlines()``. The grouping of members by drawn exit
    (``_groups``: per exit a list of request ids, or an empty tuple) is the simulator's
    private bookkeeping; schedulers must not read it.
    """
    __slots__ = ("id", "model", "pos", "size", "n0", "t_start", "merge_at", "_groups", "_dl", "_rids")

    def __init__(self, bid, model, rids, exits, deadline, n_exits, t):
        self.id, self.model, self.pos, self.size, self.n0, self.t_start = bid, model, 0, len(rids), len(rids), t
        self.merge_at = -1
        g = [()] * n_exits
        if len(rids) == 1:
            r = rids[0]
            g[exits[r]] = [r]
        else:
            for r in rids:
                e = exits[r]
                if g[e]:
                    g[e].append(r)
                else:
                    g[e] = [r]
        self._groups = g
        self._dl = deadline
        self._rids = rids if len(rids) == 1 else None

    @property
    def min_deadline(self) -> float:
        """The earliest deadline among the members (inf when empty)."""
        dl = self._dl
        return min((dl[r] for g in self._groups for r in g), default=float("inf"))

    def absorb(self, other: "Batch") -> None:
        """A merge: ``other``'s members join this batch."""
        mine = self._groups
        for i, g in enumerate(other._groups):
            if g:
                mine[i] = [*mine[i], *g]
        self.size += other.size
        self._rids = None

    def rids(self) -> list[int]:
        """Member request ids in arrival order (the order reveals nothing about exits)."""
        r = self._rids
        if r is None:
            r = self._rids = sorted(r for g in self._groups for r in g)
        return list(r)

    def deadlines(self) -> list[float]:
        """Members' deadlines, in arrival order of the members."""
        dl = self._dl
        return [dl[r] for r in self.rids()]

    def _refresh(self):
        """Call after changing ``_groups`` (forgets the cached member list)."""
        self._rids = None

    def __repr__(self):
        return f"Batch(id={self.id}, model={self.model}, pos={self.pos}, size={self.size})"
