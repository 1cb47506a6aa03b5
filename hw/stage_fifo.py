"""The stage FIFO between the PE array and the drain: a group's sums per entry, in slices.

An entry is a whole group (2,352 bits on the 8 x 8). As one ``SyncFIFO`` its write enable
(``w_en & w_rdy``, from the level) was one net to every LUT RAM of the FIFO: 15.5 ns of
wire, the 8 x 8's worst path (docs/synthesis.md). Here the entry is cut into ``slices``
memories, each with its own write enable (a register copy of the push, ``w_en_rep``) and
its own pointers, so no net spans the FIFO. There is no ``w_rdy``: the writer must never
push into a full FIFO (the core's compute issue keeps at most ``depth`` groups in flight).

Timing is that of ``amaranth.lib.fifo.SyncFIFO`` without back-pressure: an entry pushed in
cycle t can be read (``r_rdy``, ``r_data``, ``r_flags``) from cycle t + 1 on; ``r_en`` while
``r_rdy`` pops it. ``r_rdy_rep`` are register copies of ``r_rdy``, one per reader slice, for
readers that enable wide registers with them.

Each copy of ``r_rdy`` (the slices' own and the reader's) keeps a level counter of its own,
following the push and pop copies of its slice (``w_en_rep``, ``r_en_rep``: the reader's
copies of ``r_en``): one next-level decision fanned out to 42 copies was the 8 x 4's worst
path (4 Dec 2026), then two shared level flags into 74 copies the 8 x 8's
(docs/synthesis.md).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["StageFIFO"]


class StageFIFO(wiring.Component):
    """``depth`` entries of ``width`` bits in ``slices`` slices; ``rdy_copies`` copies of
    ``r_rdy`` from registers."""

    def __init__(self, *, width: int, depth: int, slices: int, rdy_copies: int = 1,
                 flag_width: int = 0):
        self._MustUse__silence = True       # a refused FIFO is not an unused elaboratable
        for name, v, lo in (("width", width, 1), ("depth", depth, 2), ("slices", slices, 1),
                            ("rdy_copies", rdy_copies, 1), ("flag_width", flag_width, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"StageFIFO: {name} = {v!r}: must be an integer >= {lo}")
        if slices > width:
            raise ValueError(f"StageFIFO: slices = {slices}: must be at most width = {width}")
        self._MustUse__silence = False
        self.width, self.depth, self.slices, self.flag_width = width, depth, slices, flag_width
        super().__init__({
            # ``flag_width`` bits stored in every slice beside its part of the entry, written
            # and read per slice: small fields each reader slice needs, so none is read from
            # one slice and carried to all of them (the writer gives each slice its copy)
            "w_flags": In(data.ArrayLayout(max(flag_width, 1), slices)),
            "r_flags": Out(data.ArrayLayout(max(flag_width, 1), slices)),
            "w_data": In(width),
            "w_en": In(1),                  # the push (for the level)
            "w_en_rep": In(slices),         # copies of the push, one per slice (registers)
            "r_en": In(1),
            "r_en_rep": In(slices),         # copies of r_en, one per slice (equal to it)
            "r_data": Out(width),
            "r_rdy": Out(1),
            "r_rdy_rep": Out(rdy_copies),
            "level": Out(range(depth + 1)),
        })

    def _inc(self, ptr):
        return Mux(ptr == self.depth - 1, 0, ptr + 1)

    def elaborate(self, platform):
        m = Module()
        depth, n = self.depth, self.slices
        pop = self.r_en & self.r_rdy
        nxt = Signal(range(depth + 2), name="level_next")
        m.d.comb += nxt.eq(self.level + self.w_en - pop)
        m.d.sync += self.level.eq(nxt)
        # Every copy of ``r_rdy`` (per slice and per reader slice) keeps a level counter of
        # its own, following its slice's push and pop copies: no register of the FIFO is
        # shared by the copies (a shared ``level == 1`` flag into 74 copies was the 8 x 8's
        # worst path on 711060c, 14.57 ns of wire). ``r`` equals ``level != 0``; ``one`` is
        # ``level == 1`` registered. The counts with and without a pop are computed from
        # registers and the pop (the reader's, combinational) only selects between them:
        # an adder behind it was the 8 x 4's worst path (5 Dec 2026).
        def copy_of_rdy(name, w_en, r_en):
            r = Signal(name=name)
            lv = Signal(range(depth + 1), name=f"{name}_level")
            one = Signal(name=f"{name}_one")
            pop_i = r_en & r
            # the push and the pop select between values computed from the registers: a
            # push copy's wire into one slice, then two adders behind it, was the 8 x 4's
            # worst path with seed 3 on 9c963df
            m.d.sync += [lv.eq(Mux(w_en, Mux(pop_i, lv, lv + 1), Mux(pop_i, lv - 1, lv))),
                         one.eq(Mux(w_en, Mux(pop_i, lv == 1, lv == 0),
                                    Mux(pop_i, lv == 2, lv == 1))),
                         r.eq(w_en | (r & ~(pop_i & one)))]
            return r

        # ``r_rdy`` itself is such a register too: as ``level != 0`` it put the level's
        # compare in front of the reader's accept and of the compute issue's credit (the
        # 8 x 4's worst paths on seed 1 once the loader's were gone, 5 Dec 2026)
        m.d.comb += self.r_rdy.eq(copy_of_rdy("r_rdy_main", self.w_en, self.r_en))
        # per slice, a copy of ``r_rdy`` (equal to it in every cycle) gates the pop
        s_rdy = [copy_of_rdy(f"rdy_rep{i}", self.w_en_rep[i], self.r_en_rep[i]) for i in range(n)]
        # The reader's copies: with one per slice, the slice's own (the same push and pop
        # copies drive both, so they are equal in every cycle; as separate counters, kept
        # apart by the synthesis flow, they were 73 more on the 16 x 8)
        if len(self.r_rdy_rep) == n:
            m.d.comb += self.r_rdy_rep.eq(Cat(s_rdy))
        else:
            m.d.comb += self.r_rdy_rep.eq(Cat(
                copy_of_rdy(f"r_rdy_rep{j}", *((x[j * n // len(self.r_rdy_rep)]
                                                for x in (self.w_en_rep, self.r_en_rep))))
                for j in range(len(self.r_rdy_rep))))
        cut = [self.width * i // n for i in range(n + 1)]
        outs = []
        for i in range(n):
            lo, hi = cut[i], cut[i + 1]
            rw = self.flag_width
            mem = memory.Memory(shape=unsigned(hi - lo + rw), depth=depth, init=[])
            m.submodules[f"slice{i}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="comb")
            w_ptr = Signal(range(depth), name=f"w_ptr{i}")
            r_ptr = Signal(range(depth), name=f"r_ptr{i}")
            m.d.comb += [wp.en.eq(self.w_en_rep[i]), wp.addr.eq(w_ptr),
                         wp.data.eq(Cat(self.w_data[lo:hi], self.w_flags[i][:rw])), rp.addr.eq(r_ptr)]
            with m.If(self.w_en_rep[i]):
                m.d.sync += w_ptr.eq(self._inc(w_ptr))
            with m.If(self.r_en_rep[i] & s_rdy[i]):
                m.d.sync += r_ptr.eq(self._inc(r_ptr))
            outs.append(rp.data[:hi - lo])
            if rw:
                m.d.comb += self.r_flags[i].eq(rp.data[hi - lo:])
        m.d.comb += self.r_data.eq(Cat(*outs))
        return m
