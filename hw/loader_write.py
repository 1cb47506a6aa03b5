"""The loader's response side: each read response, with the tag its request left in the
tag FIFO, decoded into the operand buffers' write beat (every element's bank, the beat's
line and each element's line bit: ``buffers.write_beat_layout``; in
``OperandBuffers.wr_copies`` copies) or the bias registers, and the load completion counts
(``x_done``/``w_done``) that move once a load's last beat is in the memories.

Stages: r0 (the response cycle) -> r1 (tag, beat, each element's step and lane) -> r2
(each element's flat index, per copy) -> ``wr`` (bank and line); ``Loader.DECODE_STAGES``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, signed, unsigned
from amaranth.lib import data

from .buffers import OperandBuffers, elem_write_layout
from .config import HwConfig
from .interface import log2

__all__ = ["KIND_X", "KIND_W", "KIND_B", "tag_layout", "lane_decode", "response_side"]

KIND_X, KIND_W, KIND_B = 0, 1, 2


def tag_layout(cfg: HwConfig) -> data.StructLayout:
    """Where a read beat goes: written into the tag FIFO at issue, read with the response."""
    dim = cfg.dim_width
    return data.StructLayout({
        "kind": 2,
        "slot": 1,
        "last": 1,                                   # last beat of this load
        "idx": range(max(cfg.tr_max, cfg.tc)),       # X: row in tile; W: unit
        # the beat's first element (chunk element pl0, a multiple of E) decoded at issue:
        # its reduction step pl0 >> ls and its unit lane (q = pl0 & smask: q >> lseg,
        # q & segmask); element e of the beat ORs in e's own (pl0 has no bits below E)
        "s0": unsigned(dim + 1),
        "j0": range(cfg.tc),
        "lo0": range(cfg.tp),
        "nvalid": range(cfg.elems_per_beat + 1),     # elements of the beat inside the chunk
        "abase": unsigned(dim + log2(cfg.tr_max) + 1),  # X: g * n_s
        "bcol0": signed(dim + 2),                    # B: unit of the beat's first word
    })


def lane_decode(lp, v):
    """Chunk element ``v``'s reduction step and lane within its unit under the layer's
    policy: ``v >> ls``, ``q >> lseg`` and ``q & segmask`` with ``q = v & smask``. Shifts and
    masks act bit by bit, so the decode of ``a | b`` is the OR of their decodes: how a beat's
    first element (at issue) and each element's offset (at the response) combine."""
    q = v & lp.smask
    return v >> lp.ls, q >> lp.lseg, q & lp.segmask


def response_side(ldr, m, tags):
    """The response decode of the loader ``ldr`` (its ports) into ``m``; ``tags`` is the
    tag FIFO the request side writes."""
    cfg = ldr.cfg
    E, M = cfg.elems_per_beat, cfg.mem_bytes
    tagl = tag_layout(cfg)
    m.d.comb += ldr.resp_ready.eq(1)
    rtag = Signal(tagl, name="rs_tag")
    m.d.comb += [rtag.eq(tags.r_data), tags.r_en.eq(ldr.resp_valid)]
    r1 = Signal(data.StructLayout({"valid": 1, "tag": tagl, "beat": 8 * M}), name="r1")
    m.d.sync += [r1.valid.eq(ldr.resp_valid), r1.tag.eq(rtag), r1.beat.eq(ldr.resp_data)]

    # Stage r0 (the response cycle; the tag comes from the tag FIFO, a LUT-RAM read): per
    # element, the reduction step ``s`` and the lane within the unit (``j``, ``lo``),
    # registered in r1. The shifts were done at issue (``s0``, ``j0``, ``lo0``); here
    # only element e's own part, a function of the layer's parameters, is ORed in.
    # The response stages use their own copy of the layer's parameters (``rs_lp``; each
    # write-beat copy has another, ``r2_lp_rep``): the core's ``lp`` fans out over the
    # chip, and ``lp.lk`` -> the bank shift -> ``wr`` was the 8 x 4's worst path
    # (96.93 MHz, 8.68 ns of wire). The copies lag ``lp`` by a
    # cycle, long before the first response of a layer (a request leaves after STEP), and
    # every response of a layer arrives before its compute ends (the next ``lp``).
    rs_lp = Signal.like(ldr.lp, name="rs_lp")
    m.d.sync += rs_lp.eq(ldr.lp)
    r1_s, r1_j, r1_lo = [], [], []
    for e in range(E):
        es, ej, elo = _elem_lane(ldr, m, rs_lp, e)
        rs_ = Signal(cfg.dim_width + 2, name=f"r1_s{e}")
        rj = Signal(range(cfg.tc), name=f"r1_j{e}")
        rlo = Signal(range(cfg.tp), name=f"r1_l{e}")
        m.d.sync += [rs_.eq(rtag.s0 | es), rj.eq(rtag.j0 | ej), rlo.eq(rtag.lo0 | elo)]
        r1_s.append(rs_), r1_j.append(rj), r1_lo.append(rlo)
    # bias: written from r3, the write enable of each (slot, word, unit) decoded in r1
    # from the registered tag and registered twice, so that each enable is one flip-flop
    # that can sit beside the 32 it drives. (Decoded in r1 and used there, the 8 x 4's
    # worst path ran 26 rows to the bias registers; decoded in r0, from the tag FIFO's
    # read.) The beat is registered once per four units (``r2_bgrp_rep``), then once per
    # unit (``r3_bword_rep``), beside the unit's two bias registers: one register per bit
    # into every unit's was the 8 x 8's worst path on 5 Dec 2026 (14.52 ns of wire), and
    # ``r1`` straight into a copy per unit its worst path on 5421adc (8.65 ns of wire, 108.97
    # MHz). The bias is read only once the load's done count moves (r6, below).
    n_grp = max(1, cfg.tc // 4)
    r2_bwe = Signal(data.ArrayLayout(data.ArrayLayout(cfg.tc, M // 4), 2), name="r2_bwe")
    r3_bwe = Signal.like(r2_bwe, name="r3_bwe")
    r2_bgrp = [Signal(8 * M, name=f"r2_bgrp_rep{c}") for c in range(n_grp)]
    r3_bword = [Signal(8 * M, name=f"r3_bword_rep{u}") for u in range(cfg.tc)]
    is_b1 = r1.valid & (r1.tag.kind == KIND_B)
    m.d.sync += [r.eq(r1.beat) for r in r2_bgrp]
    m.d.sync += [r.eq(r2_bgrp[u * n_grp // cfg.tc]) for u, r in enumerate(r3_bword)]
    m.d.sync += r3_bwe.eq(r2_bwe)
    for slot in range(2):
        for wd in range(M // 4):
            m.d.sync += r2_bwe[slot][wd].eq(Cat(is_b1 & (r1.tag.slot == slot)
                                                & (r1.tag.bcol0 == u - wd)
                                                for u in range(cfg.tc)))

    # Stage r1 -> r2 -> wr: every element's flat X index ``a = abase + s`` is registered
    # (r2) with the element's step, lanes and data, then decoded to its bank and line on
    # ``wr``. (Added and shifted in one stage, the 8 x 8's loader ended up to 11.9 ns
    # after the clock on 711060c: carry chain, the layer's shifts and the bank select
    # behind one another.) The write beat leaves in ``OperandBuffers.wr_copies`` copies
    # (``_rep``; one register per bit into every memory's copy was the 8 x 4's worst path
    # on 5 Dec 2026, 9.51 ns of wire across 37 columns), and each copy has r2 registers
    # and a decode of its own: from one r2 through one shared decode into two copies was
    # the 8 x 4's worst path with seed 2 on 0ef84ad (10.39 ns, 5.30 ns of it one wire).
    r2 = Signal(data.StructLayout({"valid": 1, "tag": tagl}), name="r2")
    m.d.sync += [r2.valid.eq(r1.valid), r2.tag.eq(r1.tag)]
    n_wr = OperandBuffers.wr_copies(cfg)
    for c in range(n_wr):
        _write_copy(ldr, m, c, r1, r1_s, r1_j, r1_lo)
    t = r2.tag
    is_x = t.kind == KIND_X

    for wd in range(M // 4):
        for slot in range(2):
            for u in range(cfg.tc):
                word = r3_bword[u][32 * wd: 32 * (wd + 1)].as_signed()
                with m.If(r3_bwe[slot][wd][u]):
                    m.d.sync += ldr.bias[slot][u].eq(word)

    # Load completion counts, visible the cycle after the last beat is written into the
    # banks (``wr`` reaches them ``OperandBuffers.WRITE_STAGES`` cycles after it leaves
    # here): the completion pulse follows ``wr`` through as many registers.
    done_x = Signal(name="r3_done_x")
    done_w = Signal(name="r3_done_w")
    m.d.sync += [done_x.eq(r2.valid & t.last & is_x), done_w.eq(r2.valid & t.last & ~is_x)]
    for i in range(OperandBuffers.WRITE_STAGES - 1):
        nx, nw = Signal(name=f"r{4 + i}_done_x"), Signal(name=f"r{4 + i}_done_w")
        m.d.sync += [nx.eq(done_x), nw.eq(done_w)]
        done_x, done_w = nx, nw
    m.d.comb += [ldr.x_inc.eq(done_x), ldr.w_inc.eq(done_w)]
    with m.If(ldr.start):
        m.d.sync += [ldr.x_done.eq(0), ldr.w_done.eq(0)]
    with m.Else():
        m.d.sync += [ldr.x_done.eq(ldr.x_done + done_x), ldr.w_done.eq(ldr.w_done + done_w)]


def _write_copy(ldr, m, c: int, r1, r1_s, r1_j, r1_lo):
    """Write-beat copy ``c``: its own r2 registers (tag, layer parameters, every
    element's flat index, step, lanes and data) and its own bank/line decode into
    ``wr[c]`` / ``wr_x[c]``, so no register or LUT is shared between the copies."""
    cfg = ldr.cfg
    E, eb, ltp = cfg.elems_per_beat, cfg.elem_bytes, log2(cfg.tp)
    tagl = tag_layout(cfg)
    r2 = Signal(data.StructLayout({"valid": 1, "tag": tagl}), name=f"r2_rep{c}")
    lp = Signal.like(ldr.lp, name=f"r2_lp_rep{c}")
    m.d.sync += [r2.valid.eq(r1.valid), r2.tag.eq(r1.tag), lp.eq(ldr.lp)]
    t = r2.tag
    is_x, is_w = t.kind == KIND_X, t.kind == KIND_W
    out = ldr.wr[c]
    for e in range(E):
        a = Signal(tagl["abase"].shape.width + 1, name=f"r2_a{e}_rep{c}")
        s, j, lo = (Signal.like(v, name=f"r2_{n}{e}_rep{c}") for v, n in
                    ((r1_s[e], "s"), (r1_j[e], "j"), (r1_lo[e], "l")))
        d = Signal(signed(cfg.data_width), name=f"r2_d{e}_rep{c}")
        raw = r1.beat[8 * eb * e: 8 * eb * (e + 1)]
        m.d.sync += [a.eq(r1.tag.abase + r1_s[e]), s.eq(r1_s[e]), j.eq(r1_j[e]),
                     lo.eq(r1_lo[e]), d.eq(raw[:cfg.data_width].as_signed())]
        xbank = (((a & lp.fmask) << (lp.lk + ltp)) | (j << ltp)
                 | ((t.idx & lp.bpmask) << lp.lseg) | lo)
        xaddr = (t.slot << log2(cfg.x_depth)) | (a >> lp.lf)
        wbank = (((t.idx << lp.lk) | j) << ltp) | ((s & lp.bpmask) << lp.lseg) | lo
        waddr = (t.slot << log2(cfg.w_depth)) | (s >> lp.lbp)
        el = Signal(elem_write_layout(cfg), name=f"r3_wr{e}_rep{c}")
        line = Mux(is_x, xaddr, waddr)
        m.d.sync += [
            el.en.eq(r2.valid & (is_x | is_w) & (e < t.nvalid)),
            el.bank.eq(Mux(is_x, xbank, wbank)),
            el.lsb.eq(line[:len(el.lsb)]),
            el.data.eq(d),
        ]
        m.d.comb += out.el[e].eq(el)
        if e == 0:
            # the beat's line (write_beat_layout): element 0's; the others only its low bit
            line0 = Signal.like(out.line, name=f"r3_wr_line_rep{c}")
            m.d.sync += line0.eq(line)
            m.d.comb += out.line.eq(line0)
    wx = Signal(name=f"r3_wr_x_rep{c}")
    m.d.sync += wx.eq(is_x)
    m.d.comb += ldr.wr_x[c].eq(wx)


def _elem_lane(ldr, m, lp, e: int):
    """Element ``e`` of a beat's own part of its reduction step and unit lane: functions
    of ``e`` and the layer's parameters only (``lp`` is registered for the layer)."""
    w = max(1, log2(ldr.cfg.elems_per_beat) + 1)
    c = Const(e, w)
    es = Signal(w, name=f"r0_es{e}")
    ej = Signal(range(ldr.cfg.tc), name=f"r0_ej{e}")
    elo = Signal(range(ldr.cfg.tp), name=f"r0_elo{e}")
    m.d.comb += [r.eq(x) for r, x in zip((es, ej, elo), lane_decode(lp, c))]
    return es, ej, elo
