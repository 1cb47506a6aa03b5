"""The row stage between the PE array and the drain: a group's sums stacked and in block
RAM, one row per cycle.

Until 6 Dec 2026 the stage was a LUT-RAM FIFO whose entry was the whole group (4,666 bits
on the 16 x 8): 1,563 ``DPR16X4`` cells, about a ninth of the device's logic cells, and
the drain held the popped entry in a 4,096-bit row shift register. A block RAM cannot take
a whole group in one cycle (36 bits a block), so this unit serialises: when the PE array's
sums come out (``ld_rep``), a shadow register takes all ``tp`` rows, each one segment of
every PE, and then passes one row a cycle through the stacking tree
(:class:`~.stack_tree.StackTree`: the sums of each unit's ``k`` PEs, compacted) into
``rows``, a :class:`~.bram.WordRAM` of ``tc`` sums a word, ``(stage_entries + 1) * tp``
words. The entry is pushed (``w_en``) when its first row leaves the tree: the group's bias
goes into ``bias``, a word per slot, and the small fields of the entry (``w_head``, with
the slot) into a LUT-RAM FIFO (:class:`~.stage_fifo.StageFIFO`) that the drain pops.

Contract:

* ``ld_rep`` (every copy) loads the shadow with ``w_vals``; the entry's push ``w_en`` with
  its ``w_nrows`` rows, ``w_bias`` and ``w_head`` comes exactly ``stack_stages(cfg)``
  cycles later. The next load (and push) must come at least ``w_nrows`` cycles later (the
  shadow passes its rows on first): the core's compute issue spaces its groups' last
  steps so (hw/core.py, ``ci_hold``). At most ``stage_entries`` entries may be in the head
  FIFO (the compute issue's credit). ``lk`` (log2 k) is stable while a layer's rows pass.
* The head of an entry pushed in cycle ``t`` is readable (``r_rdy``, ``r_data``) from cycle
  ``t + 1``; ``r_en`` while ``r_rdy`` pops it. Its row ``r`` is in ``rows`` from cycle ``t +
  2 + r`` on (written in cycle ``t + 1 + r``), its bias in ``bias`` from ``t + 1``; the drain
  reads its first row no earlier than the cycle after it pops the head, and its row ``r`` at
  least ``r`` cycles later, so no read comes before its write.
* A slot stays unwritten until ``stage_entries`` later entries have been pushed: there are
  ``stage_entries + 1`` slots, and the head FIFO holds at most ``stage_entries``, so the
  entry the drain is still reading after popping its head is never overwritten.
* Reads: ``rd_addr`` (``slot * tp + row``) and ``bias_addr`` (``slot``) give ``rd_data`` and
  ``bias_data`` two cycles later; ``rd_en`` low holds both read pipelines (the drain's
  stall).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .bram import WordRAM, addr_copies_for
from .config import HwConfig
from .interface import log2
from .stack_tree import StackTree
from .stage_fifo import StageFIFO

__all__ = ["RowStage"]


class RowStage(wiring.Component):
    """The PE array's group sums into block RAM a row a cycle; see the module docstring.

    ``head`` is the layout of the entry's small fields (the drain's ``head_layout``); the
    unit adds the slot to it on the way out (``r_data.head``, ``r_data.slot``)."""

    LATENCY = WordRAM.LATENCY

    def __init__(self, cfg: HwConfig, *, head: data.StructLayout, load_copies: int = 1):
        self._MustUse__silence = True       # a refused stage is not an unused elaboratable
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        if not isinstance(head, data.StructLayout):
            raise TypeError(f"head = {head!r}: must be a data.StructLayout")
        if (not isinstance(load_copies, int) or isinstance(load_copies, bool)
                or not 1 <= load_copies <= cfg.tc):
            raise ValueError(f"load_copies = {load_copies!r}: must be an integer from 1 to "
                             f"tc = {cfg.tc}")
        self._MustUse__silence = False
        self.cfg, self.head, self.load_copies = cfg, head, load_copies
        lane = signed(cfg.acc_width)
        super().__init__({
            "lk": In(range(log2(cfg.tc) + 1)),
            # the shadow's load in copies, equal in every cycle, each from a register of its
            # own (the PE array's ``out_valid_rep``): copy ``c`` loads the shadow's columns
            # ``u`` with ``u * load_copies // tc == c``, so no one net enables every shadow
            # bit (``out_valid`` into the 4,096 of the 16 x 8 was one net across the device)
            "ld_rep": In(load_copies),
            "w_vals": In(data.ArrayLayout(lane, cfg.tp * cfg.tc)),    # row i, PE pe: i*tc + pe
            "w_en": In(1),
            # copies of ``w_en`` from registers of their own, as many as of the load: the
            # bias blocks' write enables (copy ``c`` for the columns of ``ld_rep[c]``)
            "w_en_rep": In(load_copies),
            "w_nrows": In(range(cfg.tp + 1)),
            "w_bias": In(data.ArrayLayout(signed(32), cfg.tc)),
            "w_head": In(head),
            "r_rdy": Out(1),
            "r_en": In(1),
            "r_data": Out(self.out_layout(cfg, head)),
            "rd_en": In(1, init=1),
            "rd_addr": In(range(self.slots(cfg) * cfg.tp)),
            "rd_data": Out(data.ArrayLayout(lane, cfg.tc)),
            "bias_addr": In(range(self.slots(cfg))),
            "bias_data": Out(data.ArrayLayout(signed(32), cfg.tc)),
        })

    @staticmethod
    def stack_stages(cfg: HwConfig) -> int:
        """Cycles from the shadow's load (``ld_rep``) to the entry's push (``w_en``): the
        stacking tree's levels."""
        return StackTree.stages_for(cfg.tc)

    @staticmethod
    def slots(cfg: HwConfig) -> int:
        """Slots of the row and bias memories: one more than the head FIFO's entries."""
        return cfg.stage_entries + 1

    @classmethod
    def out_layout(cls, cfg: HwConfig, head: data.StructLayout) -> data.StructLayout:
        return data.StructLayout({"head": head, "slot": range(cls.slots(cfg))})

    def elaborate(self, platform):
        m = Module()
        n_slots = self.slots(self.cfg)
        # the slot of the next push
        w_slot = Signal(range(n_slots), name="w_slot")
        with m.If(self.w_en):
            m.d.sync += w_slot.eq(Mux(w_slot == n_slots - 1, 0, w_slot + 1))
        self._head(m, w_slot)
        self._bias(m)
        self._rows(m, w_slot)
        return m

    def _copy(self, reps, u: int):
        """The copy (of the load or of the push) that column ``u`` uses."""
        return reps[u * self.load_copies // self.cfg.tc]

    def _head(self, m, w_slot):
        """The head FIFO: the entry's small fields and its slot."""
        out = self.out_layout(self.cfg, self.head)
        m.submodules.head = head = StageFIFO(width=out.size, depth=self.cfg.stage_entries)
        w_head = Signal(out, name="w_head_slot")
        m.d.comb += [w_head.head.eq(self.w_head), w_head.slot.eq(w_slot),
                     head.w_data.eq(w_head), head.w_en.eq(self.w_en), head.r_en.eq(self.r_en),
                     self.r_rdy.eq(head.r_rdy), self.r_data.eq(head.r_data)]

    def _bias(self, m):
        """The bias: one word per slot, written with the push. Each column's block takes its
        enable from its copy of the push (``w_en_rep``) and its line from a copy of the slot
        counter per four blocks (``bias_slot_rep``), like the rows."""
        cfg = self.cfg
        tc, n_slots = cfg.tc, self.slots(cfg)
        n_addr = addr_copies_for(n_slots, tc, 32)
        m.submodules.bias = bias = WordRAM(depth=n_slots, elems=tc, width=32,
                                           addr_copies=n_addr)
        bslot = [Signal(range(n_slots), name=f"bias_slot_rep{c}") for c in range(n_addr)]
        for b in bslot:
            with m.If(self.w_en):
                m.d.sync += b.eq(Mux(b == n_slots - 1, 0, b + 1))
        m.d.comb += [bias.wr_en.eq(Cat(self._copy(self.w_en_rep, u) for u in range(tc))),
                     bias.wr_addr.eq(bslot[0]),
                     *(bias.wr_addr_rep[c].eq(b) for c, b in enumerate(bslot)),
                     bias.wr_data.eq(self.w_bias),
                     bias.rd_addr.eq(self.bias_addr), bias.rd_en.eq(self.rd_en)]
        m.d.comb += [self.bias_data[u].eq(bias.rd_data[u].as_signed()) for u in range(tc)]

    def _rows(self, m, w_slot):
        """The shadow: all rows on the load (column ``u`` under its copy of the load), then
        one row a cycle through the stacking tree into ``rows``; row 0 of the shadow is the
        next row into the tree, the rows move down one each cycle. The push comes as the
        first row leaves the tree.

        Rows still to write: ``sh_left``; whether one is written this cycle: a register per
        column (``sh_wen_rep``, ``sh_left != 0``), each the write enable of its column's
        block RAM (one register into the eight blocks' enables was the 8 x 8's worst path
        on 83b5e64: 9.08 ns of wire across the device). The write line is a register copy
        per four blocks (``sh_addr_rep``; ``slot * tp + row``, counted up)."""
        cfg = self.cfg
        tc, tp, ltp = cfg.tc, cfg.tp, log2(cfg.tp)
        n_words = self.slots(cfg) * tp
        row = data.ArrayLayout(signed(cfg.acc_width), tc)
        sh = Signal(data.ArrayLayout(row, tp), name="sh_rows")
        for u in range(tc):
            with m.If(self._copy(self.ld_rep, u)):
                m.d.sync += [sh[j][u].eq(self.w_vals[j * tc + u]) for j in range(tp)]
            with m.Else():
                m.d.sync += [sh[j][u].eq(sh[j + 1][u]) for j in range(tp - 1)]
        left = Signal(range(tp + 1), name="sh_left")
        wen_rep = [Signal(name=f"sh_wen_rep{u}") for u in range(tc)]
        with m.If(self.w_en):
            m.d.sync += [left.eq(self.w_nrows), *(w.eq(self.w_nrows != 0) for w in wen_rep)]
        with m.Elif(left != 0):
            m.d.sync += [left.eq(left - 1), *(w.eq(left != 1) for w in wen_rep)]
        n_addr = addr_copies_for(n_words, tc, cfg.acc_width)
        m.submodules.rows = rows = WordRAM(depth=n_words, elems=tc, width=cfg.acc_width,
                                           addr_copies=n_addr)
        wa = [Signal(range(n_words), name=f"sh_addr_rep{c}") for c in range(n_addr)]
        for a in wa:
            with m.If(self.w_en):
                m.d.sync += a.eq(w_slot << ltp)
            with m.Elif(wen_rep[0]):
                m.d.sync += a.eq(a + 1)
        m.submodules.tree = tree = StackTree(n=tc, width=cfg.acc_width)
        m.d.comb += [tree.lk.eq(self.lk), tree.i.eq(sh[0])]
        m.d.comb += [rows.wr_en.eq(Cat(wen_rep)), rows.wr_addr.eq(wa[0]),
                     *(rows.wr_addr_rep[c].eq(a) for c, a in enumerate(wa)),
                     rows.wr_data.eq(tree.o.as_value()),
                     rows.rd_addr.eq(self.rd_addr), rows.rd_en.eq(self.rd_en)]
        m.d.comb += [self.rd_data[u].eq(rows.rd_data[u].as_signed()) for u in range(tc)]
