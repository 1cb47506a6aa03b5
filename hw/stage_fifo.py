"""The row stage's head FIFO: a LUT-RAM FIFO with ``r_rdy`` from a register, no back-pressure.

Timing is that of ``amaranth.lib.fifo.SyncFIFO`` without ``w_rdy``: an entry pushed in
cycle t can be read (``r_rdy``, ``r_data``) from cycle t + 1 on; ``r_en`` while ``r_rdy``
pops it. The writer must never push into a full FIFO (the core's compute issue keeps at
most ``depth`` groups in flight).

``r_rdy`` is a register with a level counter of its own: as ``level != 0`` it put the
level's compare in front of the reader's accept and of the compute issue's credit (the
8 x 4's worst paths on seed 1, 5 Dec 2026). The counts with and without a pop are computed
from registers and the pop (the reader's, combinational) only selects between them: an
adder behind it was the 8 x 4's worst path (5 Dec 2026). (Until 6 Dec 2026 the FIFO held a
whole group of sums, cut into slices with copies of the push, the pop and ``r_rdy`` each;
the row stage, hw/row_stage.py, keeps the sums in block RAM and only the entry's small
fields come here.)
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["StageFIFO"]


class StageFIFO(wiring.Component):
    """``depth`` entries of ``width`` bits; ``r_rdy`` from a register."""

    def __init__(self, *, width: int, depth: int):
        self._MustUse__silence = True       # a refused FIFO is not an unused elaboratable
        for name, v, lo in (("width", width, 1), ("depth", depth, 2)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"StageFIFO: {name} = {v!r}: must be an integer >= {lo}")
        self._MustUse__silence = False
        self.width, self.depth = width, depth
        super().__init__({
            "w_data": In(width),
            "w_en": In(1),
            "r_en": In(1),
            "r_data": Out(width),
            "r_rdy": Out(1),
            "level": Out(range(depth + 1)),
        })

    def _inc(self, ptr):
        return Mux(ptr == self.depth - 1, 0, ptr + 1)

    def elaborate(self, platform):
        m = Module()
        depth = self.depth
        pop = self.r_en & self.r_rdy
        m.d.sync += self.level.eq(self.level + self.w_en - pop)
        # ``r_rdy`` (``r``) equals ``level != 0``, from a counter of its own (``lv``);
        # ``one`` is ``lv == 1`` registered
        r = Signal(name="r_rdy_reg")
        lv = Signal(range(depth + 1), name="r_rdy_level")
        one = Signal(name="r_rdy_one")
        w_en = self.w_en
        pop_r = self.r_en & r
        m.d.sync += [lv.eq(Mux(w_en, Mux(pop_r, lv, lv + 1), Mux(pop_r, lv - 1, lv))),
                     one.eq(Mux(w_en, Mux(pop_r, lv == 1, lv == 0), Mux(pop_r, lv == 2, lv == 1))),
                     r.eq(w_en | (r & ~(pop_r & one)))]
        m.d.comb += self.r_rdy.eq(r)

        mem = memory.Memory(shape=unsigned(self.width), depth=depth, init=[])
        m.submodules.mem = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="comb")
        w_ptr = Signal(range(depth), name="w_ptr")
        r_ptr = Signal(range(depth), name="r_ptr")
        m.d.comb += [wp.en.eq(w_en), wp.addr.eq(w_ptr), wp.data.eq(self.w_data),
                     rp.addr.eq(r_ptr), self.r_data.eq(rp.data)]
        with m.If(w_en):
            m.d.sync += w_ptr.eq(self._inc(w_ptr))
        with m.If(pop):
            m.d.sync += r_ptr.eq(self._inc(r_ptr))
        return m
