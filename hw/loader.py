"""The loader: walks the layer's steps ahead of the compute, reads X, W and bias beats
from memory into the free buffer slots, and maps every element to its bank and line.

When X is loaded once per row tile and W once per step (one chunk, several column
tiles), the next row tile's X is loaded in parts of ``xq`` rows, one part after each W
load of the current row tile but its first (``XPWAIT``/``XPISS``), so it is in its slot
when the compute reaches it. Loaded whole at the next row tile's first step, as before,
its beats blocked the W loads behind them and the compute waited (the first layer's
P = 27 at (B_P, k) = (4, 2) on the 8 x 8: 99 cycles of load stall per row tile of 448
compute cycles). ``xq = max(1, rows >> floor(log2(column tiles - 1)))``, so the parts end
within the row tile's steps. The first step has none: the part would wait for its slot
(the previous row tile's X, freed with that row tile's last step) and hold up the second
step's W load behind it.

Requests and responses are decoupled by a tag FIFO (``rd_outstanding`` deep) that
records where each beat goes, so up to ``rd_outstanding`` reads are in flight.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from .buffers import OperandBuffers, write_beat_layout
from .config import HwConfig
from .interface import layer_desc_layout, log2
from .loader_write import KIND_B, KIND_W, KIND_X, lane_decode, response_side, tag_layout
from .steps import StepIter, layer_params_layout

__all__ = ["Loader", "KIND_X", "KIND_W", "KIND_B"]


def _signed(v):
    """Zero-extend then reinterpret as signed, so a subtraction goes negative properly."""
    return Cat(v, Const(0, 1)).as_signed()


class Loader(wiring.Component):
    """Load engine; ``x_done``/``w_done`` count completed loads, ``x_free``/``w_free``
    pulses (from the compute) return slots' memories, ``b_free`` (later) a W slot's bias
    registers: a load's bias beats (``BISS``) wait for it."""

    #: registers from a read response to the write beat leaving on ``wr`` (r1: the tag and
    #: the elements' steps and lanes; r2: the flat index; ``wr``: bank and line). A
    #: response in cycle m is counted done in m + DECODE_STAGES + WRITE_STAGES.
    DECODE_STAGES = 3

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        dim = cfg.dim_width
        super().__init__({
            "desc": In(layer_desc_layout(cfg)),
            "lp": In(layer_params_layout(cfg)),
            "start": In(1),
            "x_free": In(1),
            "w_free": In(1),
            "b_free": In(1),
            "x_done": Out(dim + log2(cfg.tr_max) + 2),
            "w_done": Out(2 * dim + 2),
            "x_inc": Out(1),            # x_done counts up at the next edge
            "w_inc": Out(1),
            "rd_addr": Out(cfg.addr_width),
            "rd_valid": Out(1),
            "rd_ready": In(1),
            "resp_data": In(8 * cfg.mem_bytes),
            "resp_valid": In(1),
            "resp_ready": Out(1),
            # the write beat in ``OperandBuffers.wr_copies`` equal copies, each from
            # registers of its own, for the buffers' memories in its share
            "wr_x": Out(OperandBuffers.wr_copies(cfg)),
            "wr": Out(data.ArrayLayout(write_beat_layout(cfg), OperandBuffers.wr_copies(cfg))),
            "bias": Out(data.ArrayLayout(data.ArrayLayout(signed(32), cfg.tc), 2)),
            "g_idx": Out(dim),
            "g_addr": In(cfg.addr_width),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        d, lp = self.desc, self.lp
        E, M = cfg.elems_per_beat, cfg.mem_bytes
        lm = log2(M)

        m.submodules.it = it = StepIter(cfg, d, lp)
        tagl = tag_layout(cfg)
        m.submodules.tags = tags = fifo.SyncFIFO(width=tagl.size, depth=cfg.rd_outstanding)

        x_issued = Signal.like(self.x_done, name="ld_x_issued")
        w_issued = Signal.like(self.w_done, name="ld_w_issued")
        # Loads issued and not yet freed (0 .. 2) per kind: a small register (counted up as a
        # load is issued, down a cycle after its slot is freed) so that the slot test is one bit.
        x_out = Signal(2, name="ld_x_out")
        w_out = Signal(2, name="ld_w_out")
        b_out = Signal(2, name="ld_b_out")     # W loads issued whose bias is still in use
        x_iss = Signal(name="ld_x_iss")        # x_issued counts up at the next edge
        w_iss = Signal(name="ld_w_iss")
        with m.If(self.start):
            m.d.sync += [x_out.eq(0), w_out.eq(0), b_out.eq(0)]
        with m.Else():
            m.d.sync += [x_out.eq(x_out + x_iss - self.x_free),
                         w_out.eq(w_out + w_iss - self.w_free),
                         b_out.eq(b_out + w_iss - self.b_free)]

        # ---- X parts (see the module's docstring) ------------------------------------
        # ``ilv``: the layer loads X in parts (one chunk, several column tiles, several row
        # tiles); ``px_more``: rows of the next row tile's X are still to be issued (set at
        # each row tile's first step); ``px_idx`` / ``px_row_addr``: its next row and that
        # row's address; ``px_cnt``: rows of this part left - 1; ``xq_m1``: rows per part - 1.
        ilv = Signal(name="px_ilv")
        m.d.sync += ilv.eq(lp.ch_one & ~lp.ct_one & ~lp.rt_one)
        px_more = Signal(name="px_more")
        px_idx = Signal(range(cfg.tr_max), name="px_idx")
        px_row_addr = Signal(cfg.addr_width, name="px_row_addr")
        px_cnt = Signal(range(cfg.tr_max), name="px_cnt")
        xq_m1 = Signal(range(cfg.tr_max), name="px_xq_m1")
        m.d.sync += xq_m1.eq(lp.trm1 >> it.lnct)
        nx_rows_m1 = Signal(range(cfg.tr_max), name="px_nx_rows_m1")
        xn_base = Signal(cfg.addr_width, name="px_xn_base")
        nx_rows_m2 = Signal(range(cfg.tr_max), name="px_nx_rows_m2")
        m.d.sync += [nx_rows_m1.eq(it.nx_rows_m1), nx_rows_m2.eq(nx_rows_m1 - 1),
                     xn_base.eq(d.x_addr + it.nx_row_off)]
        # the step's W load is followed by a part, and the step loads X whole (not in parts)
        part = Signal(name="px_part")
        m.d.comb += part.eq(ilv & ~it.last_rt & ~it.first_ct & px_more)
        x_whole = Signal(name="px_x_whole")
        m.d.comb += x_whole.eq(it.x_new & (~ilv | it.first_rt))

        # ---- request generator -------------------------------------------------------
        idx = Signal(range(max(cfg.tr_max, cfg.tc) + 1), name="rq_idx")
        beat = Signal(cfg.dim_width + 1, name="rq_beat")
        pl0 = Signal(cfg.dim_width + 1, name="rq_pl0")
        abase = Signal(tagl["abase"].shape, name="rq_abase")
        addr = Signal(cfg.addr_width, name="rq_addr")
        row_addr = Signal(cfg.addr_width, name="rq_row_addr")
        boff = Signal(range(M), name="rq_boff")                # bias byte offset of c0 in its beat
        m.d.comb += boff.eq((it.c0 << 2) & (M - 1))
        # bias beats - 1, registered: the bias load starts at least three cycles after a step.
        # ceil((boff + 4*ncols) / M) - 1 = (boff + 4*ncols - 1) >> lm = ((boff | 3) +
        # 4*(ncols - 1)) >> lm (boff's low two bits are 0): one adder from registers. As
        # ``ceil(...) - 1`` from ``it.ncols`` (a select) it was three adders in a row, the
        # 16 x 8's worst path routed with router1 on 69e0aa9 (95.47 MHz, 12 logic levels).
        nbb_m1 = Signal(cfg.dim_width + 1, name="rq_nbb_m1")
        nbb_m2 = Signal(cfg.dim_width + 1, name="rq_nbb_m2")
        m.d.sync += [nbb_m1.eq(((boff | 3) + (it.ncols_m1 << 2)) >> lm), nbb_m2.eq(nbb_m1 - 1)]
        # the step loads bias, registered: the step's flags change only on the iterator's
        # advance (NEXT) or restart, at least two cycles before the W issue reads this
        # (it.last_ch -> need_bias -> the tag's ``last`` was the 4 x 4's worst path on
        # 292ead2 seeds 1 and 3)
        need_bias = Signal(name="rq_need_bias")
        m.d.sync += need_bias.eq(d.bias_en & it.last_ch)

        tag = Signal(tagl, name="rq_tag")
        m.d.comb += tags.w_data.eq(tag)

        # The tag's decode of the beat's first element (see ``_tag_layout``), kept in
        # registers beside ``pl0`` and computed from its next value, so the tag's path into
        # the tag FIFO is a select of registers, not an adder and shifts.
        pl0_s0 = Signal(tagl["s0"].shape, name="rq_pl0_s0")
        pl0_j0 = Signal(tagl["j0"].shape, name="rq_pl0_j0")
        pl0_lo0 = Signal(tagl["lo0"].shape, name="rq_pl0_lo0")

        def set_pl0(v):
            if isinstance(v, int):              # 0: its decode is 0, no logic
                return [pl0.eq(v), pl0_s0.eq(v), pl0_j0.eq(v), pl0_lo0.eq(v)]
            return [pl0.eq(v), *(r.eq(x) for r, x in zip((pl0_s0, pl0_j0, pl0_lo0),
                                                           lane_decode(lp, v)))]

        def issue_pl0():
            return [tag.s0.eq(pl0_s0), tag.j0.eq(pl0_j0), tag.lo0.eq(pl0_lo0)]

        m.d.comb += self.rd_addr.eq(addr)
        # The request's valid from two registers: ``iss`` (the walk is in an issue state,
        # set with the FSM's next state by ``goto``) and ``room`` (the tag FIFO's ``w_rdy``,
        # computed a cycle early from its level). Decoded from the FSM's state and the FIFO's
        # level, the transfer ``fire`` shared LUTs with the walk's sync resets and ran from
        # the state across the loader to every request register's enable: the 8 x 4's worst
        # path on 0ef84ad, seed 1 (4 LUTs, 9.62 ns of wire).
        # In BISS a request also waits for the slot's bias registers (``b_out``: fewer than
        # two W loads issued whose bias is in use); ``in_b`` is set with the state.
        iss = Signal(name="rq_iss")
        in_b = Signal(name="rq_in_b")
        room = Signal(init=1, name="rq_room")
        fire = Signal(name="rq_fire")
        pop = tags.r_en & tags.r_rdy
        m.d.comb += [self.rd_valid.eq(iss & room & ~(in_b & b_out[1])),
                     fire.eq(self.rd_valid & self.rd_ready), tags.w_en.eq(fire)]
        # ``level + fire - pop != depth`` as a select, by the transfer and the pop, between
        # compares of the level register (``level <= depth`` always holds), like the compute
        # issue's credit: the response's valid -> pop -> adder -> compare was the 8 x 8's
        # worst path with seed 2 on d64e533 (100.46 MHz).
        full = tags.level == tags.depth
        m.d.sync += room.eq(Mux(fire & ~pop, tags.level != tags.depth - 1,
                                Mux(pop & ~fire, 1, ~full)))

        # ``rq_row_addr`` is loaded outside the FSM, selected by registers set with the state
        # (``st_*``): decoded from the state, its selects sat behind the state register's
        # fan-out (``rq_fsm_state`` -> ``rq_row_addr``, the 8 x 8's worst path with seed 1 on
        # a13e590: 9.86 ns, 8.47 of it wire).
        st_xw = Signal(name="rq_st_xwait")
        st_xpw = Signal(name="rq_st_xpwait")
        st_ww = Signal(name="rq_st_wwait")
        st_x = Signal(name="rq_st_xiss")           # XISS or XPISS
        st_w = Signal(name="rq_st_wiss")

        def goto(state):
            m.next = state
            m.d.sync += [iss.eq(state in ("XISS", "WISS", "BISS", "XPISS")), in_b.eq(state == "BISS"),
                         st_xw.eq(state == "XWAIT"), st_xpw.eq(state == "XPWAIT"),
                         st_ww.eq(state == "WWAIT"), st_x.eq(state in ("XISS", "XPISS")),
                         st_w.eq(state == "WISS")]
        # ``beat == it.nb_m1`` kept in a register (``it.nb_m1`` is a select on ``it.last_ch``,
        # and the compare fed the enables of the walk's counters: the 4 x 4's worst path on
        # d553c2c seed 1). Its inputs, registered from the step's sizes, are current from
        # XWAIT (WWAIT) on: the step's flags change only on the iterator's advance (NEXT).
        nb_zero = Signal(name="rq_nb_zero")
        nb_m2 = Signal(len(it.nb_m1), name="rq_nb_m2")
        m.d.sync += [nb_zero.eq(it.nb_m1 == 0), nb_m2.eq(it.nb_m1 - 1)]
        last_beat = Signal(name="rq_last_beat")
        # Likewise the load's last row (X: ``idx == rows - 1``), column (W: ``idx == ncols -
        # 1``) or bias beat (``beat == nbb - 1``), one register kept with ``idx`` / ``beat``
        # from values registered beside it: the compares fed the walk's state and the
        # iterator's counters (the 4 x 4's and the 8 x 4's worst paths on d2c1c7d, seed 1).
        last_item = Signal(name="rq_last_item")
        rows_m2 = Signal(len(it.rows_m1), name="rq_rows_m2")
        ncols_m2 = Signal(len(it.ncols_m1), name="rq_ncols_m2")
        m.d.sync += [rows_m2.eq(it.rows_m1 - 1), ncols_m2.eq(it.ncols_m1 - 1)]
        nvalid = Signal(range(E + 1), name="rq_nvalid")
        m.d.comb += nvalid.eq(Mux(last_beat, it.nv_last, E))

        def advance(last_beat, last_item, on_row_end, on_last):
            """After a request transfers: next beat, or next row (X) / column (W) of the load."""
            with m.If(fire):
                with m.If(~last_beat):
                    m.d.sync += [beat.eq(beat + 1), *set_pl0((pl0 + E)[:len(pl0)]), addr.eq(addr + M),
                                 last_beat.eq(beat == nb_m2)]
                with m.Else():
                    m.d.sync += [beat.eq(0), *set_pl0(0), idx.eq(idx + 1), last_beat.eq(nb_zero),
                                 addr.eq(row_addr + lp.stride)]
                    on_row_end()
                    with m.If(last_item):
                        on_last()

        # X row gather (``rs > 0``): the walk's sample index, row within the sample and that
        # row's byte offset; where the current row tile starts; where the next one starts
        # (every X load of a tile walks the same rows, so any of them may record it).
        # ``rs > 0`` in a register, like ``rs_m1`` below (the descriptor holds from the cycle
        # after the command's accept; the walk starts three cycles later): decoded from the
        # descriptor, its 16-bit compare sat in front of every start-address select
        # (``lay`` -> ``rq_row_addr`` / ``px_row_addr``, the 8 x 8's worst path with seed 1 on
        # d64e533, 106.03 MHz, 7 ns of wire).
        gather = Signal(name="rq_gather")
        m.d.sync += gather.eq(d.rs != 0)
        g_j = Signal(cfg.dim_width, name="rq_g_j")
        g_rr = Signal(cfg.dim_width, name="rq_g_rr")
        g_off = Signal(cfg.addr_width, name="rq_g_off")
        t_j, t_rr, t_off = (Signal.like(v, name=f"rq_t{v.name[4:]}") for v in (g_j, g_rr, g_off))
        n_j, n_rr, n_off = (Signal.like(v, name=f"rq_n{v.name[4:]}") for v in (g_j, g_rr, g_off))
        tile_first = it.first_ct & it.first_ch
        s_j = Mux(tile_first, n_j, t_j)
        s_rr = Mux(tile_first, n_rr, t_rr)
        s_off = Mux(tile_first, n_off, t_off)
        # g_wrap: the walk's row is the last of its sample (g_rr == rs - 1), a register
        # updated with g_rr.
        rs_m1 = Signal(cfg.dim_width, name="rq_rs_m1")
        rs_m2 = Signal(cfg.dim_width, name="rq_rs_m2")
        rs_is1 = Signal(name="rq_rs_is1")
        m.d.sync += [rs_m1.eq(d.rs - 1), rs_m2.eq(d.rs - 2), rs_is1.eq(d.rs == 1)]
        g_wrap = Signal(name="rq_g_wrap")
        # Load start addresses less the gather address, registered: XWAIT (WWAIT) comes at
        # least two cycles after the step's offsets change, so these are current there.
        x_base = Signal(cfg.addr_width, name="rq_x_base")
        gp_off = Signal(cfg.addr_width, name="rq_gp_off")
        w_base = Signal(cfg.addr_width, name="rq_w_base")
        m.d.sync += [x_base.eq(d.x_addr + it.row_off + it.p_off), gp_off.eq(s_off + it.p_off),
                     w_base.eq(d.w_addr + it.col_off + it.p_off)]

        # The gather index the table answers (``g_idx``) is a register of its own, ``rq_g_idx``,
        # set as the walk enters a state that reads ``g_addr`` and as ``g_j`` moves: XWAIT
        # reads sample ``s_j``, XPWAIT ``n_j``, XISS/XPISS ``g_j + 1`` (the next sample, at a
        # wrapping row end). Selected by the walk's state, the index put the state decode in
        # front of the table's lookup and the address adders behind it: on the ULX3S board's
        # SoC that path (the loader's state -> the FBE's gather table -> ``rq_addr``, 27
        # levels, 20 ns of wire) missed 40 MHz on 6fe03f2 (39.30 MHz, seed 1).
        g_idx = Signal(cfg.dim_width, name="rq_g_idx")
        m.d.comb += self.g_idx.eq(g_idx)
        # the X walk's next row (a row of a whole X load or of a part)
        nx_j = Mux(g_wrap, g_j + 1, g_j)
        nx_rr = Mux(g_wrap, 0, g_rr + 1)
        nx_off = Mux(g_wrap, 0, g_off + lp.stride)

        def x_row_end(rows_m2):
            """An X row ends (``rows_m2``: the load's rows - 2, for its last row)."""
            # the row ends its group of B_P rows: ``(idx + 1) % B_P == 0`` without the
            # adder (``lp.lbp`` -> adder -> compare was the 4 x 4's worst path), or the
            # load (a short last group): after a load ``abase`` is its groups x n_s, where
            # the next chunk of a resident X starts
            with m.If(((idx & lp.bpmask) == lp.bpmask) | last_item):
                m.d.sync += abase.eq(abase + it.n_s)
            m.d.sync += [g_j.eq(nx_j), g_idx.eq(nx_j + 1), g_rr.eq(nx_rr), g_off.eq(nx_off),
                         g_wrap.eq(Mux(g_wrap, rs_is1, g_rr == rs_m2)),
                         last_item.eq(idx == rows_m2)]
            with m.If(gather & g_wrap):
                m.d.sync += addr.eq(self.g_addr + it.p_off)

        def x_done_issue():
            """An X load's last request: count it, and record where the next one starts.
            A resident X (``lp.xres``) is one load in the slot count (``x_out``, the slot
            bit ``x_issued[0]``), its last chunk's; ``x_done`` counts every chunk's."""
            m.d.comb += x_iss.eq(1)
            m.d.sync += [x_issued.eq(x_issued + 1), n_j.eq(nx_j), n_rr.eq(nx_rr), n_off.eq(nx_off)]

        def after_w():
            """A W load's last request: the next row tile's X part, if any, else NEXT."""
            with m.If(part):
                m.d.sync += g_idx.eq(n_j)
                goto("XPWAIT")
            with m.Else():
                goto("NEXT")

        # load start addresses: X (XWAIT), the next row tile's X part (XPWAIT: the first part
        # starts where the current row tile's X ended, ``n_*``, later ones resume at ``px_*``)
        x_start = Mux(gather, self.g_addr + gp_off, x_base)
        first = px_idx == 0
        xp_start = Mux(first, Mux(gather, self.g_addr + n_off, xn_base), px_row_addr)
        with m.If(st_xw):
            m.d.sync += row_addr.eq(x_start)
        with m.Elif(st_xpw):
            m.d.sync += row_addr.eq(xp_start)
        with m.Elif(st_ww):
            m.d.sync += row_addr.eq(w_base)
        with m.Elif((st_x | st_w) & fire & last_beat):
            # a row (column) ends: the next one a stride on, or (X row gather) at the next
            # sample's address when the row was its sample's last
            with m.If(st_x & gather & g_wrap):
                m.d.sync += row_addr.eq(self.g_addr + it.p_off)
            with m.Else():
                m.d.sync += row_addr.eq(row_addr + lp.stride)

        with m.FSM(name="rq_fsm"):
            with m.State("IDLE"):
                m.d.comb += it.restart.eq(self.start)
                with m.If(self.start):
                    m.d.sync += [x_issued.eq(0), w_issued.eq(0), n_j.eq(0), n_rr.eq(0), n_off.eq(0)]
                    goto("STEP")
            with m.State("STEP"):
                with m.If(it.first_ct):
                    m.d.sync += [px_more.eq(1), px_idx.eq(0)]
                with m.If(x_whole):
                    m.d.sync += g_idx.eq(s_j)
                    goto("XWAIT")
                with m.Elif(it.w_new):
                    goto("WWAIT")
                with m.Else():
                    goto("NEXT")
            with m.State("XWAIT"):
                m.d.sync += [idx.eq(0), beat.eq(0), last_beat.eq(nb_zero), *set_pl0(0),
                             last_item.eq(it.rows_m1 == 0), addr.eq(x_start),
                             g_j.eq(s_j), g_rr.eq(s_rr), g_off.eq(s_off), g_wrap.eq(s_rr == rs_m1),
                             t_j.eq(s_j), t_rr.eq(s_rr), t_off.eq(s_off)]
                # a resident X's later chunks go on in its slot after the chunk before
                with m.If(~lp.xres | it.first_ch):
                    m.d.sync += abase.eq(0)
                with m.If(~x_out[1]):
                    m.d.sync += g_idx.eq(s_j + 1)
                    goto("XISS")
            with m.State("XISS"):
                last_row = last_item
                m.d.comb += [tag.kind.eq(KIND_X), tag.slot.eq(x_issued[0]),
                             tag.last.eq(last_beat & last_row), tag.idx.eq(idx),
                             *issue_pl0(), tag.nvalid.eq(nvalid), tag.abase.eq(abase)]

                def x_last():
                    with m.If(~lp.xres | it.last_ch):
                        x_done_issue()
                    with m.If(it.w_new):
                        goto("WWAIT")
                    with m.Else():
                        goto("NEXT")
                advance(last_beat, last_row, lambda: x_row_end(rows_m2), x_last)
            with m.State("XPWAIT"):
                # a part of the next row tile's X (``xp_start`` above)
                m.d.sync += [idx.eq(px_idx), beat.eq(0), last_beat.eq(nb_zero), *set_pl0(0),
                             addr.eq(xp_start), px_cnt.eq(xq_m1),
                             last_item.eq(px_idx == nx_rows_m1)]
                with m.If(first):
                    m.d.sync += [abase.eq(0), g_j.eq(n_j), g_rr.eq(n_rr), g_off.eq(n_off),
                                 g_wrap.eq(n_rr == rs_m1)]
                with m.If(~x_out[1]):
                    m.d.sync += g_idx.eq(Mux(first, n_j, g_j) + 1)
                    goto("XPISS")
            with m.State("XPISS"):
                m.d.comb += [tag.kind.eq(KIND_X), tag.slot.eq(x_issued[0]),
                             tag.last.eq(last_beat & last_item), tag.idx.eq(idx),
                             *issue_pl0(), tag.nvalid.eq(nvalid), tag.abase.eq(abase)]

                def xp_row_end():
                    x_row_end(nx_rows_m2)
                    m.d.sync += [px_idx.eq(idx + 1), px_cnt.eq(px_cnt - 1),
                                 px_row_addr.eq(Mux(gather & g_wrap, self.g_addr + it.p_off,
                                                    row_addr + lp.stride))]
                    with m.If(px_cnt == 0):
                        goto("NEXT")

                def xp_last():
                    x_done_issue()
                    m.d.sync += px_more.eq(0)
                    goto("NEXT")
                advance(last_beat, last_item, xp_row_end, xp_last)
            with m.State("WWAIT"):
                m.d.sync += [idx.eq(0), beat.eq(0), last_beat.eq(nb_zero), *set_pl0(0),
                             addr.eq(w_base),
                             last_item.eq(it.ncols_m1 == 0)]
                with m.If(~w_out[1]):
                    goto("WISS")
            with m.State("WISS"):
                last_col = last_item
                m.d.comb += [tag.kind.eq(KIND_W), tag.slot.eq(w_issued[0]),
                             tag.last.eq(last_beat & last_col & ~need_bias), tag.idx.eq(idx),
                             *issue_pl0(), tag.nvalid.eq(nvalid)]

                def w_last():
                    with m.If(need_bias):
                        m.d.sync += [beat.eq(0), addr.eq(d.b_addr + (((it.c0 << 2) >> lm) << lm)),
                                     last_item.eq(nbb_m1 == 0)]
                        goto("BISS")
                    with m.Else():
                        m.d.comb += w_iss.eq(1)
                        m.d.sync += w_issued.eq(w_issued + 1)
                        after_w()
                def w_col_end():
                    m.d.sync += last_item.eq(idx == ncols_m2)
                advance(last_beat, last_col, w_col_end, w_last)
            with m.State("BISS"):
                last_bbeat = last_item
                m.d.comb += [tag.kind.eq(KIND_B), tag.slot.eq(w_issued[0]), tag.last.eq(last_bbeat),
                             tag.bcol0.eq(_signed(beat << (lm - 2)) - _signed(boff >> 2))]
                with m.If(fire):
                    m.d.sync += [beat.eq(beat + 1), addr.eq(addr + M), last_item.eq(beat == nbb_m2)]
                    with m.If(last_bbeat):
                        m.d.comb += w_iss.eq(1)
                        m.d.sync += w_issued.eq(w_issued + 1)
                        after_w()
            with m.State("NEXT"):
                with m.If(it.last_step):
                    goto("IDLE")
                with m.Else():
                    m.d.comb += it.advance.eq(1)
                    goto("STEP")

        response_side(self, m, tags)
        return m
