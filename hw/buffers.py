"""Double-buffered operand buffers: one word-wide block RAM per group, a registered copy
network for X, operand fetch.

Storage: X is ``tc`` memories (groups) and W is ``tc`` memories (one per PE), each word
``tp`` elements wide, so the bank count follows the capacity, not the lanes. The logical
bank ``b`` of docs/architecture.md ("Buffers") is element ``b % tp`` of the word of memory
``b // tp``. The loader maps every element of a beat to its bank and line; all elements of
a beat that land in one memory land on the same line (checked for every policy in
tests/test_buffers.py), so each memory takes a beat as one word write with an enable per
element: no per-bank crossbar. A beat's elements land on at most two consecutive lines,
so the beat carries one line and each element the low bit of its own
(:func:`write_beat_layout`).

Fetch: every memory is read at one address per cycle. W stays beside its PE (a network
of ``log2(tp)`` levels inside the word replicates the weights over the ``B_P`` segments;
lanes past the end of the reduction are zeroed). PE ``pe`` takes X group ``(a mod F)*k + pe mod k``; instead of a
``tc``-way read crossbar, X words pass a registered copy network of ``log2(tc)`` levels
(two per stage): at level ``b``, while ``k <= 2**b``, a PE whose index bit ``b`` differs from
that bit of ``(a mod F) << log2(k)`` takes the word of the PE ``2**b`` away.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .bram import WordRAM, addr_copies_for
from .config import HwConfig
from .interface import log2
from .widemux import WideMux

__all__ = ["OperandBuffers", "elem_write_layout", "line_bits", "write_beat_layout", "net_stages",
           "w_stages", "w_levels", "mem_shape"]

#: copy-network levels resolved per register stage
LEVELS_PER_STAGE = 2


def line_bits(cfg: HwConfig) -> int:
    """Low bits of its line each element of a write beat carries: one (X: is it on the
    beat's second line), or ``log2(w_word_lines)`` (W: its line within the wide word)."""
    return max(1, log2(cfg.w_word_lines))


def elem_write_layout(cfg: HwConfig) -> data.StructLayout:
    """One element of a write beat: enable, logical bank, the low bits of its line, data."""
    return data.StructLayout({
        "en": 1,
        "bank": range(cfg.lanes),
        "lsb": line_bits(cfg),       # low bits of the element's line (slot * depth + line)
        "data": signed(cfg.data_width),
    })


def write_beat_layout(cfg: HwConfig) -> data.StructLayout:
    """The loader's write beat: the line of element 0 and the beat's elements.

    The elements of a beat land on at most two lines, ``line`` and ``line + 1`` (X: ``E/S
    <= F`` consecutive virtual lines, ``F`` to a memory line; W: one line, or one word of
    ``w_word_lines`` lines), so each element carries only its line's low bit: it is on
    ``line + 1`` when that bit differs from ``line``'s (W with wide words: its line's low
    ``log2(w_word_lines)`` bits, its place in the word). (Until 6 Dec 2026, evening, every element carried its whole line, 11 bits each on
    the 8 x 8 and 16 x 8: 88 of the beat's 216 bits, in every memory's copy.)"""
    depth = 2 * max(cfg.x_depth, cfg.w_depth)
    return data.StructLayout({
        "line": range(depth),        # slot * depth + line of element 0
        "el": data.ArrayLayout(elem_write_layout(cfg), cfg.elems_per_beat),
    })


def mem_shape(cfg: HwConfig, which: str) -> tuple[int, int]:
    """(depth, elements per word) of one X or W memory, both slots: X words are ``tp``
    elements; W words ``tp * w_word_lines`` (a beat wider than ``tp`` elements lands on
    that many aligned lines of one PE's memory, written as one word)."""
    if which == "x":
        return 2 * cfg.x_depth, cfg.tp
    wl = cfg.w_word_lines
    return 2 * cfg.w_depth // wl, cfg.tp * wl


def addr_reps(cfg: HwConfig, which: str) -> int:
    """Register copies of a memory's write line: one per 4 block RAMs it takes on ECP5."""
    depth, elems = mem_shape(cfg, which)
    return addr_copies_for(depth, elems, cfg.data_width)


def net_stages(cfg: HwConfig) -> int:
    """Register stages of the X copy network (at least one: the fetch's select stage)."""
    return max(1, -(-log2(cfg.tc) // LEVELS_PER_STAGE))


def w_levels(cfg: HwConfig) -> int:
    """Levels of the W fetch network: ``log2(w_word_lines)`` that pick a line out of a wide
    word, then ``log2(tp)`` that replicate the segment."""
    return log2(cfg.w_word_lines) + log2(cfg.tp)


def w_stages(cfg: HwConfig) -> int:
    """Register stages of the W fetch network: its levels two per stage, in at most the X
    network's stages (more levels per stage when the W word is the wider)."""
    return min(net_stages(cfg), max(1, -(-w_levels(cfg) // LEVELS_PER_STAGE)))


class OperandBuffers(wiring.Component):
    """X and W memories with their write select and the operand fetch.

    Fetch: addresses and selects presented with ``rd_valid`` at cycle t give operands at
    ``x``/``w`` with ``op_valid`` at cycle t + ``latency_for(cfg)``: request register,
    memory read, output register (and select decode), then the copy network's stages (X)
    or the replication select and lane mask (W, read correspondingly later).
    """

    #: registers from the loader's write beat to the memories' write ports (w0 to w3 of
    #: ``_write_side``): a beat leaving the loader in cycle t is in the memories at the end
    #: of cycle t + WRITE_STAGES (the loader counts the load done one cycle later)
    WRITE_STAGES = 4

    @staticmethod
    def wr_copies(cfg: HwConfig) -> int:
        """Copies of the loader's write beat (``wr``, ``wr_x``): one per four memories
        (memory ``g`` takes copy ``g * copies // tc``)."""
        return max(1, cfg.tc // 4)

    @staticmethod
    def latency_for(cfg: HwConfig) -> int:
        # request register, memory read, output register, the copy network's stages
        return 3 + net_stages(cfg)

    @property
    def latency(self) -> int:
        return self.latency_for(self.cfg)

    def __init__(self, cfg: HwConfig, *, tag_width: int = 1):
        self.cfg = cfg
        op = data.ArrayLayout(signed(cfg.data_width), cfg.lanes)
        super().__init__({
            # layer policy, stable while a layer runs
            "lbp": In(range(log2(cfg.tp) + 1)),
            "lk": In(range(log2(cfg.tc) + 1)),
            "lseg": In(range(log2(cfg.tp) + 1)),
            # write side (loader)
            # the beat goes to X (else W); the beat; equal copies (``wr_copies``)
            "wr_x": In(self.wr_copies(cfg)),
            "wr": In(data.ArrayLayout(write_beat_layout(cfg), self.wr_copies(cfg))),
            # read side (compute)
            "rd_valid": In(1),
            "rd_tag": In(tag_width),
            # one copy of the X line per X memory (equal values): each from its own register,
            # so no single flip-flop drives the address pins of every block (the 4 x 4 with
            # 65536-element X buffers has 64; docs/synthesis.md)
            "rd_xaddr": In(data.ArrayLayout(range(2 * cfg.x_depth), cfg.tc)),
            "rd_xgrp": In(range(cfg.tc)),       # a mod F
            "rd_waddr": In(range(2 * cfg.w_depth)),
            "rd_wgrp": In(range(cfg.tp)),       # s mod B_P
            "rd_rem": In(unsigned(cfg.dim_width + 1)),  # elements of the chunk left at this step
            "op_valid": Out(1),
            "op_tag": Out(tag_width),
            "x": Out(op),
            "w": Out(op),
        })

    def elaborate(self, platform):
        m = Module()
        xmem, wmem = self._write_side(m)
        rq = self._request_stage(m)
        self._x_fetch(m, xmem, rq)
        self._w_fetch(m, wmem, rq)
        return m

    # ---- read request register ----------------------------------------------------------
    def _request_stage(self, m) -> dict:
        """The read request registered as it enters (``q_``), the addresses in one copy per
        memory (``_rep``): the compute issue's decision drives only these registers, which
        nextpnr can keep beside it, and each copy has a cycle to reach its memory (the
        issue's decision to the W request was the 4 x 4's worst path on 996aa36 seed 1,
        8.97 of 11.03 ns routing across the device)."""
        cfg = self.cfg
        q = {}
        for name in ("rd_valid", "rd_tag", "rd_xgrp", "rd_wgrp", "rd_rem"):
            v = getattr(self, name)
            r = Signal.like(v, name="q_" + name[3:])
            m.d.sync += r.eq(v)
            q[name[3:]] = r
        q["xaddr"] = [Signal(range(2 * cfg.x_depth), name=f"q_xaddr_rep{g}") for g in range(cfg.tc)]
        q["waddr"] = [Signal(range(2 * cfg.w_depth), name=f"q_waddr_rep{g}") for g in range(cfg.tc)]
        m.d.sync += [r.eq(self.rd_xaddr[g]) for g, r in enumerate(q["xaddr"])]
        m.d.sync += [r.eq(self.rd_waddr) for r in q["waddr"]]
        return q

    # ---- write side -------------------------------------------------------------------
    def _write_side(self, m):
        """Four registers between the loader and the memories, so each long wire has a
        cycle of its own and no stage is more than two LUTs deep. w0: per memory index
        ``g`` a plain copy (``_rep``, kept apart by the synthesis flow) of the beat as it
        leaves the loader: one flip-flop per bit no longer drives the decode of every
        memory across the block-RAM rows (the 8 x 8's worst path on 085289d: 11.66 ns of
        wire into ``w1_hit_rep*``). w1: per memory and element, whether the element lands
        in this memory (``w1_mhit``: its enable and the bank's memory part, one LUT), its
        position in the word, whether it is on the beat's second line (``w1_inc``), and
        its data; the beat's two lines. w2: per position of the word whether an element
        hits it and which (a binary index: at most one element hits a position), and the
        line of the elements that land here (the second if one of them is on it). (Decoded
        from w0 in one stage, the compare, the OR over the beat and the index encode were
        four LUTs behind the copy, placed between the loader and the memory: the 8 x 8's
        worst path with seed 1 on 9b0eb31 and on 8c73028, 95.87 and 96.35 MHz.) w3: per
        memory the word (each position a multiplexer over the beat by its index), an
        enable per element for X and for W, and the line. (Until 5 Dec 2026 a stage held
        the one-hot hit matrix, ``tp * E`` bits per memory, and the next an AND-OR over it
        and the data: on the 8 x 8 those hit bits and the data into the AND-ORs were 14 %
        of router2's overuse at its 3rd iteration and a quarter of what was left at its
        23rd, docs/synthesis.md.)
        A write lands four cycles after the beat; the loader counts a load done one cycle
        later (docs/cycle_model.md)."""
        cfg = self.cfg
        tc, tp, dw, e = cfg.tc, cfg.tp, cfg.data_width, cfg.elems_per_beat
        ltp, lwl = log2(tp), log2(cfg.w_word_lines)
        npos = tp << lwl                    # positions of a (W) word; X words use the first tp
        addr_shape = write_beat_layout(cfg)["line"].shape
        word = data.ArrayLayout(unsigned(dw), npos)
        xmem, wmem = [], []
        for g in range(tc):
            wr0 = Signal(write_beat_layout(cfg), name=f"w0_wr_rep{g}")
            wx0 = Signal(name=f"w0_x_rep{g}")
            c = g * self.wr_copies(cfg) // tc
            m.d.sync += [wr0.eq(self.wr[c]), wx0.eq(self.wr_x[c])]
            # w1: per element, this memory is hit (``mhit``), where (position) and on the
            # beat's second line (``inc``); the beat's two lines
            mhit = Signal(e, name=f"w1_mhit_rep{g}")
            inc = Signal(e, name=f"w1_inc_rep{g}")
            pos = Signal(data.ArrayLayout(unsigned(ltp + lwl), e), name=f"w1_pos_rep{g}")
            line0 = Signal(addr_shape, name=f"w1_line0_rep{g}")
            line1 = Signal(addr_shape, name=f"w1_line1_rep{g}")
            d1 = Signal(data.ArrayLayout(unsigned(dw), e), name=f"w1_data_rep{g}")
            wx1 = Signal(name=f"w1_x_rep{g}")
            for i, el in enumerate(wr0.el):
                inc0 = el.lsb[0] ^ wr0.line[0]
                # a W element's line within its wide word (the word is the beat's line's)
                hi = Mux(wx0, 0, el.lsb[:lwl]) if lwl else Const(0, 0)
                m.d.sync += [mhit[i].eq(el.en & ((el.bank >> ltp) == g)),
                             inc[i].eq(inc0),
                             pos[i].eq(Cat(el.bank[:ltp], hi)), d1[i].eq(el.data.as_unsigned())]
            m.d.sync += [wx1.eq(wx0), line0.eq(wr0.line), line1.eq(wr0.line + 1)]
            # w2: per position, an element hits it (``w2_hit``), and which (``w2_sel``);
            # the memory's line (every element that lands here is on the same one)
            d_rep = Signal(data.ArrayLayout(unsigned(dw), e), name=f"w2_data_rep{g}")
            hit = Signal(npos, name=f"w2_hit_rep{g}")
            sel = Signal(data.ArrayLayout(range(e), npos), name=f"w2_sel_rep{g}")
            line = Signal(addr_shape, name=f"w2_line_rep{g}")
            wx = Signal(name=f"w2_x_rep{g}")
            m.d.sync += [d_rep.eq(d1), wx.eq(wx1)]
            for j in range(npos):
                hits = [mhit[i] & (pos[i] == j) for i in range(e)]
                idx = 0
                for i, h in enumerate(hits):
                    idx = idx | Mux(h, i, 0)
                m.d.sync += [hit[j].eq(Cat(*hits).any()), sel[j].eq(idx)]
            m.d.sync += line.eq(Mux((mhit & inc).any(), line1, line0))

            w3_data = Signal(word, name=f"w3_data{g}")
            w3_x = Signal(tp, name=f"w3_xen{g}")
            w3_w = Signal(npos, name=f"w3_wen{g}")
            # the line per memory, in copies for the memories' block groups (``addr_reps``)
            w3_lines = {which: [Signal(addr_shape, name=f"w3_{which}line{g}_rep{c}")
                                for c in range(addr_reps(cfg, which))] for which in "xw"}
            for j in range(npos):
                # the position's element: an e-way select (WideMux: the slices' own muxes)
                m.d.sync += w3_data[j].eq(self._wide_select(m, f"w3_dsel{g}_{j}", d_rep, sel[j]))
                if j < tp:
                    m.d.sync += w3_x[j].eq(hit[j] & wx)
                m.d.sync += w3_w[j].eq(hit[j] & ~wx)
            m.d.sync += [r.eq(line) for r in w3_lines["x"]]
            m.d.sync += [r.eq(line >> lwl) for r in w3_lines["w"]]

            for which, en, out in (("x", w3_x, xmem), ("w", w3_w, wmem)):
                # The loader never writes a slot the compute reads (double buffering), so
                # the ports never collide (``WordRAM``'s contract).
                reps = w3_lines[which]
                depth, elems = mem_shape(cfg, which)
                ram = WordRAM(depth=depth, elems=elems, width=dw, addr_copies=len(reps))
                m.submodules[f"{which}mem{g}"] = ram
                m.d.comb += [ram.wr_en.eq(en), ram.wr_addr.eq(reps[0]),
                             ram.wr_data.eq(w3_data.as_value()[:elems * dw]),
                             *(ram.wr_addr_rep[c].eq(r) for c, r in enumerate(reps))]
                out.append(ram)
        return xmem, wmem

    @staticmethod
    def _wide_select(m, name, vals, sel):
        """``vals[sel]`` from WideMux cells: one for 2, 4 or 8 inputs; two eight-way ones
        and a LUT for 16 (a 16-byte port's beat); the plain select otherwise."""
        n, width = len(vals), vals.shape().elem_shape.width
        if n in (2, 4, 8):
            mx = WideMux(n=n, width=width)
            m.submodules[name] = mx
            m.d.comb += [mx.sel.eq(sel), mx.i.eq(vals)]
            return mx.o
        if n == 16:
            halves = []
            for h in range(2):
                mx = WideMux(n=8, width=width)
                m.submodules[f"{name}_{h}"] = mx
                m.d.comb += [mx.sel.eq(sel[:3]),
                             mx.i.eq(vals.as_value()[8 * width * h: 8 * width * (h + 1)])]
                halves.append(mx.o)
            return Mux(sel[3], halves[1], halves[0])
        return vals[sel]

    # ---- X fetch: read, output register, copy network -----------------------------------
    def _x_fetch(self, m, xmem, rq):
        cfg = self.cfg
        tc, tp, dw = cfg.tc, cfg.tp, cfg.data_width
        ltc = log2(tc)
        word = data.ArrayLayout(unsigned(dw), tp)
        cur = []
        for g, ram in enumerate(xmem):
            # read register and output register (the block RAM's own on ECP5): f1, f2
            m.d.comb += ram.rd_addr.eq(rq["xaddr"][g])
            cur.append(ram.rd_data)
        # The group the request reads, shifted by k: c = (a mod F) << log2(k), registered
        # with the data (f1, f2); the level selects are decoded a stage ahead of their
        # multiplexers, per PE and element (``_rep``), each driving one element's ``dw``
        # multiplexers. (One copy per PE drove the ``tp * dw`` of a word, spread between the
        # memories it selects among: on the 8 x 8, 11.94 ns of wire into ``f3_x``, seed 1's
        # worst path on b965ae2.)
        c1 = Signal(range(tc), name="f1_xc")
        lk1 = Signal.like(self.lk, name="f1_lk")
        m.d.sync += [c1.eq(rq["xgrp"] << self.lk), lk1.eq(self.lk)]
        ctl_c, ctl_lk = c1, lk1
        for st in range(net_stages(cfg)):
            levels = [b for b in range(st * LEVELS_PER_STAGE, (st + 1) * LEVELS_PER_STAGE)
                      if b < ltc]
            # selects for this stage's levels, registered beside the stage's input data
            sel = {}
            for pe in range(tc):
                for b in levels:
                    for l in range(tp):
                        s_ = Signal(name=f"f{2 + st}_xsel_rep{pe}_{b}_{l}")
                        m.d.sync += s_.eq((ctl_lk <= b) & (ctl_c[b] != ((pe >> b) & 1)))
                        sel[pe, b, l] = s_
            c_n = Signal.like(ctl_c, name=f"f{2 + st}_xc")
            lk_n = Signal.like(ctl_lk, name=f"f{2 + st}_lk")
            m.d.sync += [c_n.eq(ctl_c), lk_n.eq(ctl_lk)]
            ctl_c, ctl_lk = c_n, lk_n
            # the levels, composed combinationally, then one register
            vals = [[cur[pe][l] for l in range(tp)] for pe in range(tc)]
            for b in levels:
                vals = [[Mux(sel[pe, b, l], vals[pe ^ (1 << b)][l], vals[pe][l])
                         for l in range(tp)] for pe in range(tc)]
            nxt = [Signal(word, name=f"f{3 + st}_x{pe}") for pe in range(tc)]
            m.d.sync += [nxt[pe][l].eq(vals[pe][l]) for pe in range(tc) for l in range(tp)]
            cur = nxt
        for pe in range(tc):
            for l in range(tp):
                m.d.comb += self.x[pe * tp + l].eq(cur[pe][l].as_signed())

    # ---- W fetch: delayed read, output register, replication network and lane mask -------
    def _w_fetch(self, m, wmem, rq):
        """The W read starts ``net_stages - w_stages`` cycles after the request register
        (its address and controls delayed), so the replication network's last stage ends
        with the X network's last.

        Lane ``l`` of a PE takes element ``(wgrp << lseg) | (l & segmask)`` of its memory's
        word (the B_P segments share one segment of weights). Instead of a ``tp``-way
        select per lane, the word passes ``log2(tp)`` levels (``w_stages`` register stages):
        at level ``b >= lseg`` a lane whose bit ``b`` differs from that bit of ``wgrp <<
        lseg`` takes the element of the lane ``2**b`` away, like the X copy network. Each
        element then feeds two multiplexers per level instead of ``tp`` (the 8 x 8's
        ``tp``-way selects were 3,124 LUTs and the largest share of the router's overuse,
        7.8 % at iteration 2 on 085289d)."""
        cfg = self.cfg
        tc, tp, dw, n = cfg.tc, cfg.tp, cfg.data_width, cfg.lanes
        ltp, lwl = log2(tp), log2(cfg.w_word_lines)
        n_st = w_stages(cfg)
        req = data.StructLayout({"valid": 1, "tag": len(self.rd_tag),
                                 "wgrp": len(self.rd_wgrp), "rem": len(self.rd_rem)})
        r = Signal(req, name="f0_wreq")
        waddr = rq["waddr"]
        m.d.comb += [r.valid.eq(rq["valid"]), r.tag.eq(rq["tag"]), r.wgrp.eq(rq["wgrp"]),
                     r.rem.eq(rq["rem"])]
        for i in range(net_stages(cfg) - n_st):
            d = Signal(req, name=f"f0_wreq_d{i}")
            m.d.sync += d.eq(r)
            r = d
            wd = [Signal.like(a, name=f"f0_waddr_d{i}_rep{g}") for g, a in enumerate(waddr)]
            m.d.sync += [b.eq(a) for a, b in zip(waddr, wd)]
            waddr = wd
        cur = []
        for ram, a in zip(wmem, waddr):
            # a wide word holds w_word_lines lines: the word, then the line (``_wsub``)
            m.d.comb += ram.rd_addr.eq(a >> lwl)
            cur.append(ram.rd_data)

        # the request's valid and tag, in step with the data
        f = Signal(data.StructLayout({"valid": 1, "tag": len(self.rd_tag)}), name="f1_req")
        m.d.sync += [f.valid.eq(r.valid), f.tag.eq(r.tag)]
        for st in range(n_st):
            f_n = Signal.like(f, name=f"f{2 + st}_req")
            m.d.sync += f_n.eq(f)
            f = f_n
        # Per-layer constants (stable while a layer runs).
        kmask = Signal(range(tc), name="f0_kmask")
        segmask = Signal(range(tp), name="f0_segmask")
        m.d.sync += [kmask.eq((1 << self.lk) - 1), segmask.eq((1 << self.lseg) - 1)]
        # Stage f1 -> f2: per PE (``_rep``) the lane mask and, per level, the two selects
        # (lanes whose bit b is 0 take from above, lanes whose bit is 1 from below), decoded
        # from per-PE copies of the request and registered; a later stage's selects are
        # delayed to its data, so every stage is only multiplexers.
        # Lane mask: lane l of PE pe holds element q < tc*tp of the step's slice and is valid
        # while q < rem: rem >= tc*tp (``big``, per PE) or q < rem's low bits, a compare of
        # log2(tc*tp) bits per lane instead of rem's 17. (A thermometer of rem - base per PE
        # with one bit per lane saved more LUTs but put three LUT levels and two long wires
        # between registers: the 8 x 8's worst path on 3e8c036, 80.11 MHz.)
        ln = log2(n)
        lmask = Signal(n, name="f2_lmask")
        sel = {}
        for pe in range(tc):
            if lwl:
                sub = Signal(lwl, name=f"f1_wsub_rep{pe}")
                m.d.sync += sub.eq(waddr[pe][:lwl])
                for b in range(lwl):
                    s_ = Signal(name=f"f2_wsub_rep{pe}_{b}")
                    m.d.sync += s_.eq(sub[b])
                    sel[pe, ("s", b), 0] = s_
            wgrp = Signal.like(r.wgrp, name=f"f1_wgrp_rep{pe}")
            rem = Signal(ln, name=f"f1_rem_rep{pe}")
            big = Signal(name=f"f1_big_rep{pe}")
            lseg = Signal.like(self.lseg, name=f"f0_lseg_rep{pe}")
            m.d.sync += [wgrp.eq(r.wgrp), rem.eq(r.rem[:ln]), big.eq(r.rem[ln:].any()),
                         lseg.eq(self.lseg)]
            blk = Signal(range(tp), name=f"f1_wblk{pe}")          # wgrp << lseg
            m.d.comb += blk.eq(wgrp << lseg)
            for b in range(ltp):
                for side in (0, 1):
                    s_ = Signal(name=f"f2_wsel_rep{pe}_{b}_{side}")
                    m.d.sync += s_.eq((lseg <= b) & (blk[b] != side))
                    sel[pe, ("r", b), side] = s_
            for l in range(tp):
                q = Signal(range(n), name=f"f0_q_{pe}_{l}")    # lane's element within S
                m.d.sync += q.eq(((pe & kmask) << lseg) | (l & segmask))
                m.d.sync += lmask[pe * tp + l].eq(big | (q < rem))
        # the levels in order: the wide word's line (top bit first: each halves the word),
        # then the replication over the segments
        order = [("s", b) for b in reversed(range(lwl))] + [("r", b) for b in range(ltp)]
        width = mem_shape(cfg, "w")[1]          # elements of the vector entering a stage
        per = -(-len(order) // n_st) if order else 0
        for st in range(n_st):
            levels = order[st * per: (st + 1) * per]
            # this stage's selects, delayed to its data (st cycles after stage 0's)
            for key in [k_ for k_ in sel if k_[1] in levels]:
                for i in range(st):
                    d = Signal(name=f"f{3 + i}_w{key[1][0]}sel_rep{key[0]}_{key[1][1]}_{key[2]}")
                    m.d.sync += d.eq(sel[key])
                    sel[key] = d
            vals = [[cur[pe][l] for l in range(width)] for pe in range(tc)]
            for kind, b in levels:
                if kind == "s":
                    half = tp << b
                    vals = [[Mux(sel[pe, (kind, b), 0], vals[pe][l + half], vals[pe][l])
                             for l in range(half)] for pe in range(tc)]
                else:
                    vals = [[Mux(sel[pe, (kind, b), (l >> b) & 1], vals[pe][l ^ (1 << b)],
                                 vals[pe][l]) for l in range(tp)] for pe in range(tc)]
            if st == n_st - 1:
                # the last stage: the lane mask (a product with a zero weight is zero
                # whatever the X lane holds) and the operand register
                msk = lmask
                for i in range(n_st - 1):
                    d = Signal.like(msk, name=f"f{3 + i}_lmask")
                    m.d.sync += d.eq(msk)
                    msk = d
                for pe in range(tc):
                    for l in range(tp):
                        m.d.sync += self.w[pe * tp + l].eq(
                            Mux(msk[pe * tp + l], vals[pe][l].as_signed(), 0))
            else:
                width = len(vals[0])
                nxt = [Signal(data.ArrayLayout(unsigned(dw), width), name=f"f{3 + st}_w{pe}")
                       for pe in range(tc)]
                m.d.sync += [nxt[pe][l].eq(vals[pe][l]) for pe in range(tc) for l in range(width)]
                cur = nxt
        m.d.sync += [self.op_valid.eq(f.valid), self.op_tag.eq(f.tag)]
