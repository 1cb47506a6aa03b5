"""The Fluid Batching Engine and the NPU it drives (:class:`FluidNPU`).

The FBE runs a network program (descriptor memory, :func:`~.fbe_layout.entry_layout`)
for a batch whose size changes while it runs: exits shrink it, a preempt pauses it while
newly admitted samples catch up, and a merge grows it. At every entry it looks up the
policy <B_R, B_P, k> for (current batch size, entry's table column) in the control table
and drives the :class:`~.core.NPUCore` with ``ceil(B / B_R)`` GEMM commands whose X rows
are gathered per sample. After an exit head the :class:`~.exit_unit.ExitUnit` tests each
sample. The state machine, the memory layout and every odd request's outcome are in
docs/fbe.md.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .core import NPUCore
from .exit_unit import ExitUnit
from .fbe_layout import (EV_ACCEPT, EV_EXIT, EV_IDLE, EV_LAYER_DONE, EV_LAYER_START, EV_MERGE,
                         EV_REFUSE, EV_RESUME, MODE_CATCHUP, MODE_IDLE, MODE_MAIN, REFUSE_SAMPLES,
                         REFUSE_SLOTS, REFUSE_ZERO, SRC_BACKBONE, SRC_INPUT, SRC_PREV, admit_layout,
                         entry_layout, event_layout, prog_write_layout, result_layout, slot_width,
                         status_layout, table_write_layout)
from .interface import mem_port_signature

__all__ = ["FluidNPU"]


class FluidNPU(wiring.Component):
    """The NPU core, the exit unit and the FBE behind one memory port.

    Host-facing ports: ``prog`` and ``table`` fill the descriptor memory and the control
    table (while idle); ``res_addr``/``res_shift`` place the result areas (sample tag
    ``t``'s logits go to ``res_addr + (t << res_shift)``); ``admit`` stages samples (tag,
    input address); ``preempt`` carries B_incr; ``results`` and ``events`` report back;
    ``status`` shows the registers; ``cycle`` counts clock cycles since reset. With
    ``step`` high the FBE stops at every boundary where the batch could be paused until
    the scheduler answers on ``preempt`` (B_incr = 0: continue); ``status.decide`` is high
    while it waits (and while idle).
    """

    #: deliberate bugs for testing the tests: ``"merge"`` copies the first catch-up
    #: sample's activation address to every merged sample.
    FAULTS = ("merge",)

    def __init__(self, cfg: HwConfig, *, fault: str | None = None):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        if fault is not None and fault not in self.FAULTS:
            raise ValueError(f"fault = {fault!r}: must be None or one of {', '.join(self.FAULTS)}")
        self.cfg = cfg
        self.fault = fault
        cw = (cfg.b_max).bit_length()
        super().__init__({
            "mem": Out(mem_port_signature(cfg)),
            "prog": In(stream.Signature(prog_write_layout(cfg))),
            "table": In(stream.Signature(table_write_layout(cfg))),
            "res_addr": In(cfg.addr_width),
            "res_shift": In(6),
            "step": In(1),
            "admit": In(stream.Signature(admit_layout(cfg))),
            "preempt": In(stream.Signature(unsigned(cw))),
            "results": Out(stream.Signature(result_layout(cfg))),
            "events": Out(stream.Signature(event_layout(cfg))),
            "status": Out(status_layout(cfg)),
            "cycle": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        B = cfg.b_max
        cw = B.bit_length()
        sw = slot_width(cfg)
        aw = cfg.addr_width
        lw = len(self.status.layer)

        m.submodules.core = core = NPUCore(cfg)
        m.submodules.eu = eu = ExitUnit(cfg)

        m.d.sync += self.cycle.eq(self.cycle + 1)

        # ---- memory port: the core, or the exit unit while it works -----------------------
        eu_sel = Signal(name="mx_eu_sel")
        for name in ("rd_req", "wr_req"):
            src_c, src_e, dst = getattr(core.mem, name), getattr(eu.mem, name), getattr(self.mem, name)
            m.d.comb += [dst.valid.eq(Mux(eu_sel, src_e.valid, src_c.valid)),
                         dst.payload.eq(Mux(eu_sel, src_e.payload, src_c.payload)),
                         src_c.ready.eq(dst.ready & ~eu_sel), src_e.ready.eq(dst.ready & eu_sel)]
        for name in ("rd_resp", "wr_resp"):
            src_c, src_e, dst = getattr(core.mem, name), getattr(eu.mem, name), getattr(self.mem, name)
            m.d.comb += [src_c.payload.eq(dst.payload), src_e.payload.eq(dst.payload),
                         src_c.valid.eq(dst.valid & ~eu_sel), src_e.valid.eq(dst.valid & eu_sel),
                         dst.ready.eq(Mux(eu_sel, src_e.ready, src_c.ready))]

        # ---- configuration: descriptor memory and control table ---------------------------
        el = entry_layout(cfg)
        m.submodules.desc = desc = memory.Memory(shape=el, depth=cfg.net_entries, init=[])
        d_wr = desc.write_port()
        d_rd = desc.read_port()
        lidw = len(self.table.payload.lid)
        m.submodules.tab = tab = memory.Memory(shape=16, depth=1 << (lidw + cw), init=[])
        t_wr = tab.write_port()
        t_rd = tab.read_port()
        m.d.comb += [
            self.prog.ready.eq(1), d_wr.en.eq(self.prog.valid),
            d_wr.addr.eq(self.prog.payload.idx), d_wr.data.eq(self.prog.payload.entry),
            self.table.ready.eq(1), t_wr.en.eq(self.table.valid),
            t_wr.addr.eq(Cat(self.table.payload.lid, self.table.payload.b)),
            t_wr.data.eq(self.table.payload.word),
        ]

        # ---- staging, slots, batch contexts -----------------------------------------------
        al = admit_layout(cfg)
        m.submodules.stage = stage = fifo.SyncFIFOBuffered(width=al.size, depth=B)
        m.d.comb += [stage.w_data.eq(self.admit.payload), stage.w_en.eq(self.admit.valid),
                     self.admit.ready.eq(stage.w_rdy)]
        head = al(stage.r_data)

        free = Signal(B, init=(1 << B) - 1, name="sl_free")
        n_free = Signal(cw, init=B, name="sl_n_free")
        tag = Array(Signal(cfg.tag_width, name=f"sl_tag{i}") for i in range(B))
        xin = Array(Signal(aw, name=f"sl_xin{i}") for i in range(B))
        lowest = Signal(sw, name="sl_lowest")
        for i in reversed(range(B)):
            with m.If(free[i]):
                m.d.comb += lowest.eq(i)

        pslot = Array(Array(Signal(sw, name=f"cx{c}_slot{i}") for i in range(B)) for c in range(2))
        bb = Array(Array(Signal(aw, name=f"cx{c}_bb{i}") for i in range(B)) for c in range(2))
        bcnt = Array(Signal(cw, name=f"cx{c}_b") for c in range(2))
        gtab = Array(Signal(aw, name=f"gt_x{i}") for i in range(B))
        otab = Array(Signal(aw, name=f"gt_o{i}") for i in range(B))

        mode = Signal(2, name="fb_mode")
        cur = Signal(name="fb_ctx")
        lyr = Signal(lw, name="fb_l")
        l_old = Signal(lw, name="fb_l_old")
        hold = Signal(name="fb_hold")
        e = Signal(el, name="fb_e")
        word = Signal(16, name="fb_word")
        j = Signal(cw, name="fb_j")
        n = Signal(cw, name="fb_n")
        j0 = Signal(cw, name="fb_j0")
        oacc = Signal(aw, name="fb_oacc")
        mask = Signal(B, name="fb_mask")
        b = bcnt[cur]

        st = self.status
        m.d.comb += [st.mode.eq(mode), st.layer.eq(lyr), st.b_act.eq(b), st.b_old.eq(bcnt[0]),
                     st.l_old.eq(l_old), st.free.eq(n_free), st.staged.eq(stage.level), st.hold.eq(hold)]

        # ---- events and results -----------------------------------------------------------
        evl = event_layout(cfg)
        m.submodules.evq = evq = fifo.SyncFIFOBuffered(width=evl.size, depth=4)
        ev = Signal(evl, name="ev_w")
        m.d.comb += [evq.w_data.eq(ev), ev.cycle.eq(self.cycle), ev.layer.eq(lyr), ev.ctx.eq(cur),
                     self.events.payload.eq(evq.r_data), self.events.valid.eq(evq.r_rdy),
                     evq.r_en.eq(self.events.ready)]
        rl = result_layout(cfg)
        m.submodules.resq = resq = fifo.SyncFIFOBuffered(width=rl.size, depth=B)
        m.d.comb += [self.results.payload.eq(resq.r_data), self.results.valid.eq(resq.r_rdy),
                     resq.r_en.eq(self.results.ready)]

        def emit(kind, count=0, info=0, mask_=0):
            m.d.comb += [ev.kind.eq(kind), ev.count.eq(count), ev.info.eq(info), ev.mask.eq(mask_),
                         evq.w_en.eq(1)]
            return evq.w_rdy

        # ---- the core's command and its gather lookups -----------------------------------
        br = word[0:8]
        n_s = Signal(cw, name="cm_n_s")
        left = b - j0
        m.d.comb += n_s.eq(Mux((br == 0) | (br >= left), left, br))
        m.d.comb += [
            core.gather.addr.eq(gtab[(j0 + core.gather.idx)[:max(sw, 1)]]),
            core.cmd.payload.r.eq(n_s * e.r), core.cmd.payload.p.eq(e.p), core.cmd.payload.c.eq(e.c),
            core.cmd.payload.w_addr.eq(e.w_addr), core.cmd.payload.b_addr.eq(e.b_addr),
            core.cmd.payload.o_addr.eq(otab[j0]),
            core.cmd.payload.log2_bp.eq(word[8:12]), core.cmd.payload.log2_k.eq(word[12:16]),
            core.cmd.payload.bias_en.eq(e.bias_en), core.cmd.payload.out_mode.eq(e.out_mode),
            core.cmd.payload.relu.eq(e.relu), core.cmd.payload.mult.eq(e.mult),
            core.cmd.payload.shift.eq(e.shift), core.cmd.payload.rs.eq(e.r),
        ]

        # ---- the exit unit's operands ------------------------------------------------------
        jslot = pslot[cur][j]
        # The sample's slot, its tag and its backbone block through registers: j, the slot
        # table, the tags and the backbone table hold from EXIT until EXP (EXW lasts at least
        # a cycle), so EXP and the exit unit (which takes the result address only once the
        # sample is found to exit, at least three cycles after its start) read the registers,
        # not ``fb_j`` -> slot table -> tag (the board SoC's worst path on 3994593, 24.14 ns).
        ex_slot = Signal.like(jslot, name="ex_slot")
        ex_tag = Signal.like(tag[0], name="ex_tag")
        ex_bb = Signal(aw, name="ex_bb")
        m.d.sync += [ex_slot.eq(jslot), ex_tag.eq(tag[ex_slot]), ex_bb.eq(bb[cur][j])]
        m.d.comb += [eu.addr.eq(otab[j]), eu.c.eq(e.c), eu.crit.eq(e.crit), eu.thr.eq(e.thr),
                     eu.final.eq(e.final), eu.res_addr.eq(self.res_addr + (ex_tag << self.res_shift))]

        rq = self.preempt.payload
        m.d.comb += d_rd.addr.eq(lyr)     # the current entry, valid from the cycle after BOUND
        ent = el(d_rd.data)

        decide = Signal(name="fb_decide")
        m.d.comb += st.decide.eq(decide)
        # GATH's gather-table write, a cycle after its lookup: the source address (the
        # sample's slot -> its input address, or its backbone or output block) is registered
        # with its index, and written from there. The board SoC's worst path on 33b95b7 was
        # that lookup straight into the table, ``fb_j`` -> slot table -> input address ->
        # ``gt_x5`` (24.95 ns at 40 MHz, 21.48 of it wire). The last write lands at the end of
        # the first CMD cycle; the core reads the table (``gather``) only once its loader
        # walks the layer, cycles after it takes the command.
        gt_wen = Signal(name="gt_wen")
        gt_wj = Signal.like(j, name="gt_wj")
        gt_wdata = Signal(aw, name="gt_wdata")
        m.d.sync += gt_wen.eq(0)
        with m.If(gt_wen):
            m.d.sync += gtab[gt_wj].eq(gt_wdata)
        with m.FSM(name="fb_fsm"):
            with m.State("IDLE"):
                m.d.comb += decide.eq(1)
                with m.If(self.preempt.valid):
                    m.next = "REQ"
            with m.State("BOUND"):
                with m.If((mode == MODE_CATCHUP) & (bcnt[1] == 0)):
                    with m.If(emit(EV_RESUME, count=bcnt[0])):
                        m.d.sync += [cur.eq(0), lyr.eq(l_old), mode.eq(MODE_MAIN)]
                with m.Elif((mode == MODE_CATCHUP) & (lyr == l_old)):
                    m.d.sync += [j.eq(0)]
                    m.next = "MERGE"
                with m.Else():
                    m.next = "DEC"
            with m.State("DEC"):
                def proceed():
                    m.d.sync += e.eq(ent)
                    m.d.comb += t_rd.addr.eq(Cat(ent.lid, b))
                    m.next = "POL"
                # a boundary where the running batch may be paused
                ok = (mode == MODE_MAIN) & ~hold & (ent.src != SRC_PREV)
                with m.If(ok & self.step):
                    # step mode: wait for the scheduler's decision; B_incr = 0 is "continue"
                    m.d.comb += decide.eq(1)
                    with m.If(self.preempt.valid & (rq == 0)):
                        m.d.comb += self.preempt.ready.eq(1)
                        proceed()
                    with m.Elif(self.preempt.valid):
                        m.next = "REQ"
                with m.Elif(ok & self.preempt.valid):
                    m.next = "REQ"
                with m.Else():
                    proceed()
            with m.State("POL"):
                with m.If(emit(EV_LAYER_START, count=b)):
                    m.d.sync += [word.eq(t_rd.data), j.eq(0),
                                 oacc.eq(Mux(cur, e.out1, e.out0))]
                    m.next = "GATH"
            with m.State("GATH"):
                src_addr = Mux(e.src == SRC_INPUT, xin[pslot[cur][j]],
                               Mux(e.src == SRC_BACKBONE, bb[cur][j], otab[j]))
                m.d.sync += [gt_wen.eq(1), gt_wj.eq(j), gt_wdata.eq(src_addr),
                             otab[j].eq(oacc), oacc.eq(oacc + e.blk),
                             j.eq(j + 1)]
                with m.If(j + 1 == b):
                    m.d.sync += j0.eq(0)
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += core.cmd.valid.eq(1)
                with m.If(core.cmd.ready):
                    m.next = "CMDW"
            with m.State("CMDW"):
                with m.If(~core.busy):
                    m.d.sync += j0.eq(j0 + n_s)
                    with m.If(j0 + n_s == b):
                        m.next = "LDONE"
                    with m.Else():
                        m.next = "CMD"
            with m.State("LDONE"):
                with m.If(emit(EV_LAYER_DONE, count=b)):
                    with m.If(e.backbone):
                        for i in range(B):
                            m.d.sync += bb[cur][i].eq(otab[i])
                        with m.If(cur == 0):
                            m.d.sync += hold.eq(0)
                    m.d.sync += [j.eq(0), n.eq(0), mask.eq(0)]
                    with m.If(e.exit):
                        m.next = "EXIT"
                    with m.Else():
                        m.next = "NEXT"
            with m.State("EXIT"):
                m.d.comb += eu.start.eq(1)
                m.d.sync += eu_sel.eq(1)
                m.next = "EXW"
            with m.State("EXW"):
                with m.If(eu.done):
                    m.d.sync += eu_sel.eq(0)
                    m.next = "EXP"
            with m.State("EXP"):
                res = Signal(rl, name="ex_res")
                m.d.comb += [res.tag.eq(ex_tag), res.slot.eq(ex_slot), res.exit_id.eq(e.exit_id),
                             res.cls.eq(eu.cls), res.top1.eq(eu.top1), res.top2.eq(eu.top2),
                             res.cycle.eq(self.cycle), resq.w_data.eq(res)]
                with m.If(eu.exited):
                    m.d.comb += resq.w_en.eq(1)
                    with m.If(resq.w_rdy):
                        m.d.sync += [free.bit_select(ex_slot, 1).eq(1), n_free.eq(n_free + 1),
                                     mask.bit_select(ex_slot, 1).eq(1), j.eq(j + 1)]
                        m.next = "EXNEXT"
                with m.Else():
                    m.d.sync += [pslot[cur][n].eq(ex_slot), bb[cur][n].eq(ex_bb),
                                 n.eq(n + 1), j.eq(j + 1)]
                    m.next = "EXNEXT"
            with m.State("EXNEXT"):
                with m.If(j == b):
                    with m.If(emit(EV_EXIT, count=b - n, info=e.exit_id, mask_=mask)):
                        m.d.sync += bcnt[cur].eq(n)
                        m.next = "NEXT"
                with m.Else():
                    m.next = "EXIT"
            with m.State("NEXT"):
                with m.If((cur == 0) & (b == 0)):
                    with m.If(emit(EV_IDLE)):
                        m.d.sync += [mode.eq(MODE_IDLE), lyr.eq(0), hold.eq(0)]
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += lyr.eq(lyr + 1)
                    m.next = "BOUND"
            with m.State("MERGE"):
                with m.If(j == bcnt[1]):
                    with m.If(emit(EV_MERGE, count=bcnt[0] + bcnt[1])):
                        m.d.sync += [bcnt[0].eq(bcnt[0] + bcnt[1]), bcnt[1].eq(0), cur.eq(0),
                                     mode.eq(MODE_MAIN), hold.eq(1)]
                        m.next = "BOUND"
                with m.Else():
                    src_bb = bb[1][0] if self.fault == "merge" else bb[1][j]
                    m.d.sync += [pslot[0][bcnt[0] + j].eq(pslot[1][j]), bb[0][bcnt[0] + j].eq(src_bb),
                                 j.eq(j + 1)]
            with m.State("REQ"):
                m.d.comb += self.preempt.ready.eq(1)
                to_catchup = mode == MODE_MAIN
                with m.If(rq == 0):
                    with m.If(emit(EV_REFUSE, count=rq, info=REFUSE_ZERO)):
                        m.next = "AFTER_REQ"
                with m.Elif(rq > stage.level):
                    with m.If(emit(EV_REFUSE, count=rq, info=REFUSE_SAMPLES)):
                        m.next = "AFTER_REQ"
                with m.Elif(rq > n_free):
                    with m.If(emit(EV_REFUSE, count=rq, info=REFUSE_SLOTS)):
                        m.next = "AFTER_REQ"
                with m.Else():
                    with m.If(emit(EV_ACCEPT, count=rq)):
                        m.d.sync += [j.eq(0), n.eq(rq)]
                        with m.If(to_catchup):
                            m.d.sync += [l_old.eq(lyr), mode.eq(MODE_CATCHUP), cur.eq(1)]
                        with m.Else():
                            m.d.sync += [mode.eq(MODE_MAIN), cur.eq(0)]
                        m.d.sync += lyr.eq(0)
                        m.next = "ALLOC"
                # a refused request that was not accepted: hold the stream until the event fits
                with m.If(~evq.w_rdy):
                    m.d.comb += self.preempt.ready.eq(0)
            with m.State("AFTER_REQ"):
                with m.If(mode == MODE_IDLE):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "BOUND"
            with m.State("ALLOC"):
                with m.If(j == n):
                    m.d.sync += bcnt[cur].eq(n)
                    m.next = "BOUND"
                with m.Else():
                    m.d.comb += stage.r_en.eq(1)
                    m.d.sync += [tag[lowest].eq(head.tag), xin[lowest].eq(head.x_addr),
                                 free.bit_select(lowest, 1).eq(0), n_free.eq(n_free - 1),
                                 pslot[cur][j].eq(lowest), j.eq(j + 1)]
        return m
