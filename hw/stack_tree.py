"""The stacking tree: the sums of ``k`` stacked PEs added, one row of the group a cycle.

A unit of ``k`` stacked PEs computes one dot product over ``k*tp`` lanes, so its sums are
the sums of its PEs. The PE array accumulates every PE's segment sums on its own and the
row stage passes a group's rows through this tree as it writes them: the row ``i`` holds
segment ``i`` of every PE, and after the tree position ``u`` holds unit ``u`` (PEs ``u*k ..
u*k + k - 1``), ``u < tc/k``, the compacted order the drain reads. Addition wraps at the
accumulators' width, so adding after accumulating gives the same sums bit for bit.

Until 6 Dec 2026 the tree sat in the PE array, in front of the accumulators: ``tp`` rows
every cycle, ``log2(tc)`` stages of ``tc*tp`` registers (11,000 flip-flops on the 16 x 8)
and its cross-PE sums 13 % of router2's overuse there (docs/synthesis.md). A group's rows
leave the row stage's shadow one a cycle anyway, so here the tree is one row wide.

Each level is a register stage: at level ``lvl`` position ``u < tc >> lvl`` takes the sum of
positions ``2u`` and ``2u + 1`` while ``k >= 2**lvl``, else keeps its own value; every
other position keeps its own. ``lk`` (log2 k) must be stable while rows pass; the level
multiplexers take it from a register copy per position and level (``_rep``).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .gated_add import GatedAdder
from .interface import log2

__all__ = ["StackTree"]


class StackTree(wiring.Component):
    """``o`` is ``i`` stacked by ``k = 2**lk`` and compacted, ``stages_for(n)`` cycles later
    (a plain pipeline: no valid, no stall)."""

    def __init__(self, *, n: int, width: int):
        self._MustUse__silence = True       # a refused tree is not an unused elaboratable
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n & (n - 1):
            raise ValueError(f"StackTree: n = {n!r}: must be a power of two >= 1")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"StackTree: width = {width!r}: must be an integer >= 1")
        self._MustUse__silence = False
        self.n, self.width = n, width
        row = data.ArrayLayout(signed(width), n)
        super().__init__({
            "lk": In(range(log2(n) + 1)),
            "i": In(row),
            "o": Out(row),
        })

    @staticmethod
    def stages_for(n: int) -> int:
        """Cycles from ``i`` to ``o``: one per level."""
        return log2(n)

    def elaborate(self, platform):
        m = Module()
        n, w = self.n, self.width
        cur = [self.i[u] for u in range(n)]
        for lvl in range(1, log2(n) + 1):
            nxt = [Signal(signed(w), name=f"t{lvl}_sum{u}") for u in range(n)]
            for u in range(n):
                if u >= n >> lvl:
                    m.d.sync += nxt[u].eq(cur[u])
                    continue
                add = Signal(name=f"t{lvl}_add_rep{u}")       # k >= 2**lvl, per position
                m.d.sync += add.eq(self.lk >= lvl)
                if u == 0:
                    # position 0 keeps its own value or adds position 1's: a gated adder
                    g = GatedAdder(width=w)
                    m.submodules[f"t{lvl}_add0"] = g
                    m.d.comb += [g.a.eq(cur[1]), g.b.eq(cur[0]), g.gate.eq(~add)]
                    m.d.sync += nxt[u].eq(g.y.as_signed())
                else:
                    m.d.sync += nxt[u].eq(Mux(add, cur[2 * u] + cur[2 * u + 1], cur[u]))
            cur = nxt
        m.d.comb += [self.o[u].eq(cur[u]) for u in range(n)]
        return m
