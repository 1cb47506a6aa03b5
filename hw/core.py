"""The NPU core: one GEMM layer per command, with the run-time policy (B_P, k).

Blocks: a :class:`~.loader.Loader` running ahead of the compute into double-buffered
:class:`~.buffers.OperandBuffers`; the compute issue below walking groups and steps;
the :class:`~.pe_array.PEArray`; the :class:`~.row_stage.RowStage` (``stage_entries``
groups); the :class:`~.drain.Drain` writing results. See docs/architecture.md.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, flipped

from .buffers import OperandBuffers
from .config import HwConfig
from .drain import Drain, head_layout
from .interface import (gather_signature, layer_desc_layout, load_in_slices, log2,
                        mem_port_signature, register_copies)
from .loader import Loader
from .pe_array import PEArray
from .row_stage import RowStage
from .steps import StepIter, derive_layer_params, layer_params_layout

__all__ = ["NPUCore"]


#: the stage entry's fields that travel in the group tag as they are (the beat counts, rows)
_TAG_HEAD_FIELDS = ("row1", "last1", "row2", "last2", "nb_m1", "nrows")


def _group_tag_layout(cfg: HwConfig) -> data.StructLayout:
    # The stage entry's beat fields (``nb_m1`` .. ``last2``) are decided at issue and travel
    # in registers: computed from the PE array's output tag they were 26 of the 8 x 8's late
    # endpoints on 9c963df (3 LUT levels, up to 10.73 ns).
    hl = head_layout(cfg)
    return data.StructLayout({
        **{n: hl[n].shape for n in _TAG_HEAD_FIELDS},
        "first": 1, "last": 1,                 # first / last cycle of the group
        "row0": unsigned(cfg.dim_width),
        "trow0": unsigned(log2(cfg.tr_max) + 1),
        "c0": unsigned(cfg.dim_width),
        "ncols": unsigned(log2(cfg.tc) + 1),
        "first_ch": 1, "last_ch": 1,
        "wslot": 1,
        "x_free": 1, "w_free": 1,              # the step's last group frees its slots
    })


def _ahead(done, use):
    """``done > use`` for free-running counters: their modular difference is in 1 .. 2**(n-1)-1."""
    d = (done - use)[:len(done)]
    return (d != 0) & ~d[-1]


class NPUCore(wiring.Component):
    """A GEMM engine of ``tc`` stackable PEs with ``tp`` segmentable lanes each.

    ``cmd`` takes one layer descriptor (``layer_desc_layout``) while idle; ``busy`` is high
    from then until every result write is acknowledged. ``mem`` is the memory port.
    ``gather`` looks up the X base address of sample ``idx`` for descriptors with ``rs > 0``
    (combinational: ``addr`` must follow ``idx`` in the same cycle); unused otherwise.
    """

    #: cycles from accepting a command to the first step setup (PREP, PREP2, START)
    START_CYCLES = 3

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(layer_desc_layout(cfg))),
            "busy": Out(1),
            "mem": Out(mem_port_signature(cfg)),
            "gather": Out(gather_signature(cfg)),
        })

    @staticmethod
    def pipe_latency_for(cfg: HwConfig) -> int:
        """Cycles from issuing a group's last cycle to its push into the row stage (its sums
        leave the PE array, then the row stage's stacking tree takes its first row)."""
        return (OperandBuffers.latency_for(cfg) + PEArray.latency_for(cfg)
                + RowStage.stack_stages(cfg))

    @property
    def pipe_latency(self) -> int:
        return self.pipe_latency_for(self.cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        ltp = log2(cfg.tp)

        lay = Signal(layer_desc_layout(cfg), name="lay")
        lp_c = Signal(layer_params_layout(cfg), name="lp_comb")
        lp = Signal(layer_params_layout(cfg), name="lp")
        derive_layer_params(m, cfg, lay, lp_c)

        m.submodules.loader = loader = Loader(cfg)
        m.submodules.bufs = bufs = OperandBuffers(cfg, tag_width=_group_tag_layout(cfg).size)
        hl = head_layout(cfg)
        # the PE array's copies of ``out_valid``: one per PE column of the row stage's shadow
        m.submodules.pe = pe = PEArray(cfg, tag_width=_group_tag_layout(cfg).size,
                                       valid_copies=cfg.tc)
        m.submodules.stage = stage = RowStage(cfg, head=hl, load_copies=cfg.tc)
        m.submodules.drain = drain = Drain(cfg)
        m.submodules.it = it = StepIter(cfg, lay, lp)

        # Loader <-> memory read port, loader -> buffers.
        m.d.comb += [
            loader.desc.eq(lay), loader.lp.eq(lp),
            self.mem.rd_req.payload.eq(loader.rd_addr),
            self.mem.rd_req.valid.eq(loader.rd_valid),
            loader.rd_ready.eq(self.mem.rd_req.ready),
            loader.resp_data.eq(self.mem.rd_resp.payload),
            loader.resp_valid.eq(self.mem.rd_resp.valid),
            self.mem.rd_resp.ready.eq(loader.resp_ready),
            self.gather.idx.eq(loader.g_idx), loader.g_addr.eq(self.gather.addr),
            bufs.wr_x.eq(loader.wr_x), bufs.wr.eq(loader.wr),
            bufs.lbp.eq(lp.lbp), bufs.lk.eq(lp.lk), bufs.lseg.eq(lp.lseg),
            pe.lbp.eq(lp.lbp), stage.lk.eq(lp.lk),
        ]

        # Buffers -> PE array.
        optag = Signal(_group_tag_layout(cfg), name="f2_tag")
        m.d.comb += [
            optag.eq(bufs.op_tag),
            pe.valid.eq(bufs.op_valid), pe.first.eq(optag.first), pe.last.eq(optag.last),
            pe.tag.eq(bufs.op_tag), pe.x.eq(bufs.x), pe.w.eq(bufs.w),
        ]

        # PE array -> row stage -> drain. The sums load the row stage's shadow as they leave
        # the array; the entry is pushed as its first row leaves the stacking tree, so the
        # group's valid and tag pass ``stack_stages`` registers (``stk<i>_*``) first, the
        # valid's last one in copies for the bias blocks' enables.
        push, push_rep, ptag = pe.out_valid, pe.out_valid_rep, pe.out_tag
        n_stk = RowStage.stack_stages(cfg)
        for i in range(n_stk):
            v = Signal(name=f"stk{i}_valid")
            t = Signal.like(ptag, name=f"stk{i}_tag")
            m.d.sync += [v.eq(push), t.eq(ptag)]
            if i == n_stk - 1:
                push_rep = Signal(cfg.tc, name="stk_valid_rep")
                register_copies(m, push_rep, push, name=f"stk{i}_valid_rep")
            push, ptag = v, t
        otag = Signal(_group_tag_layout(cfg), name="acc_tag")
        head = Signal(hl, name="acc_head")
        m.d.comb += [
            otag.eq(ptag),
            head.row0.eq(otag.row0), head.trow0.eq(otag.trow0),
            head.c0.eq(otag.c0), head.ncols.eq(otag.ncols),
            head.first.eq(otag.first_ch), head.last.eq(otag.last_ch),
            *[getattr(head, n).eq(getattr(otag, n)) for n in _TAG_HEAD_FIELDS],
            stage.ld_rep.eq(pe.out_valid_rep), stage.w_vals.eq(pe.out_vals),
            stage.w_en.eq(push), stage.w_en_rep.eq(push_rep),
            stage.w_nrows.eq(otag.nrows), stage.w_bias.eq(loader.bias[otag.wslot]),
            stage.w_head.eq(head),
            # A slot's memory is free once the step's last operands are read from it (the
            # buffers' output, ``op_valid`` of the last cycle of the last group); the W
            # slot's bias registers once that group is pushed into the row stage (which
            # writes its bias then). Both memories were freed with the sums until
            # 5 Dec 2026: with the pipeline's 10 more cycles a step of the first layer's
            # P = 27 at (B_P, k) = (4, 2) on the 8 x 8 (56 cycles) was shorter than a W
            # load's free-to-done time, and the compute waited 27 cycles per row tile.
            loader.x_free.eq(bufs.op_valid & optag.last & optag.x_free),
            loader.w_free.eq(bufs.op_valid & optag.last & optag.w_free),
            loader.b_free.eq(push & otag.w_free),
            drain.layer.eq(lay),
            drain.stage.payload.eq(stage.r_data),
            drain.stage.valid.eq(stage.r_rdy),
            stage.r_en.eq(drain.stage.ready),
            stage.rd_en.eq(drain.rd_en), stage.rd_addr.eq(drain.rd_addr),
            stage.bias_addr.eq(drain.bias_addr),
            drain.rd_data.eq(stage.rd_data), drain.bias_data.eq(stage.bias_data),
        ]
        wiring.connect(m, drain.wr_req, flipped(self.mem.wr_req))

        # Writes outstanding.
        wr_pending = Signal(range(1 << 16), name="wr_pending")
        wr_fire = self.mem.wr_req.valid & self.mem.wr_req.ready
        wr_ack = self.mem.wr_resp.valid
        m.d.comb += self.mem.wr_resp.ready.eq(1)
        m.d.sync += wr_pending.eq(wr_pending + wr_fire - wr_ack)

        # ---- compute issue -------------------------------------------------------------
        # Groups between issue and the drain (at most ``stage_entries``, the depth of the row
        # stage's head FIFO): a new group may start while fewer are in flight. The test is a
        # register, computed from the count's next value.
        inflight = Signal(range(cfg.stage_entries + 2), name="ci_inflight")
        pop = stage.r_en & stage.r_rdy
        start_g = Signal(name="ci_start_g")
        # The credit's next value only selects, by the new group and the drain's pop,
        # between compares of the count register (``inflight <= D`` always holds): an adder
        # and a compare behind the pop, then behind the new group, were the 8 x 4's worst
        # paths with the loader's paths gone (5 Dec 2026, seeds 1 and 2).
        D = cfg.stage_entries
        credit = Signal(name="ci_credit", init=1)
        m.d.sync += [inflight.eq(inflight + start_g - pop),
                     credit.eq(Mux(start_g, Mux(pop, inflight < D, inflight < D - 1),
                                   Mux(pop, 1, inflight < D)))]

        x_cnt = Signal.like(loader.x_done, name="ci_x_cnt")
        w_cnt = Signal.like(loader.w_done, name="ci_w_cnt")
        # The step's X (W) load is done: ``x_done > x_use`` with ``x_use = x_cnt`` for a new
        # load, else ``x_cnt - 1`` (the slot of the previous step); one subtraction.
        # ``x_diff = x_done - x_cnt`` is kept as a small register (the loader's completion
        # pulses count up, taking a step's load counts down), so the test is shallow.
        x_diff = Signal(signed(4), name="ci_x_diff")
        w_diff = Signal(signed(4), name="ci_w_diff")
        x_take = Signal(name="ci_x_take")
        w_take = Signal(name="ci_w_take")
        m.d.sync += [x_diff.eq(x_diff + loader.x_inc - x_take),
                     w_diff.eq(w_diff + loader.w_inc - w_take)]
        x_ok = ~x_diff[-1] & (~it.x_new | (x_diff != 0))
        w_ok = ~w_diff[-1] & (~it.w_new | (w_diff != 0))
        x_use = Signal.like(loader.x_done, name="ci_x_use")
        w_use = Signal.like(loader.w_done, name="ci_w_use")
        m.d.comb += [x_use.eq(Mux(it.x_new, x_cnt, x_cnt - 1)),
                     w_use.eq(Mux(it.w_new, w_cnt, w_cnt - 1))]
        # X slot and line: one register each, beside the decision that moves them. The read
        # request stage (OperandBuffers, ``q_xaddr_rep``) copies the address once per X
        # memory, so each long wire runs register to register. (A copy per memory here, from
        # before that stage existed, spread the decision over 8 x 22 counter bits: the 8 x 4's
        # worst path on both seeds, 5-6.6 ns of wire into the copies' next-value LUTs.)
        xslot = Signal(name="ci_xslot")
        wslot = Signal(name="ci_wslot")
        g = Signal(range(cfg.tr_max + 1), name="ci_g")
        s = Signal(cfg.dim_width + 1, name="ci_s")
        # The virtual X line a = g*n_s + s and the W step s as (line, group) pairs, a = xline*F
        # + xgrp and s = wline*B_P + wgrp, counted directly (no shifts on the bank addresses).
        xline = Signal(cfg.dim_width + log2(cfg.tr_max) + 1, name="ci_xline")
        xgrp = Signal(range(cfg.tc), name="ci_xgrp")
        wline = Signal(cfg.dim_width + 1, name="ci_wline")
        wgrp = Signal(range(cfg.tp), name="ci_wgrp")
        rem = Signal(cfg.dim_width + 1, name="ci_rem")
        trow0 = Signal(log2(cfg.tr_max) + 2, name="ci_trow0")
        # Registered loop conditions: s == 0, s == n_s - 1, g == n_g - 1.
        s_zero = Signal(name="ci_s_zero")
        last_s = Signal(name="ci_last_s")
        last_g = Signal(name="ci_last_g")
        # In RUN, ``~last_s & (wgrp == B_P - 1)``: the step, once issued, moves the W line on.
        # A register, so the line's enable is ``go & wadv``, one LUT from registers: from the
        # group and mask compare it was three, and s_zero -> go -> ``ci_wline`` the 8 x 8's
        # worst path on f489f6e (98.89 MHz, 8.64 of 10.11 ns wire).
        wadv = Signal(name="ci_wadv")
        wadv_first = ~it.ns_one & (lp.bpmask == 0)      # its value at a group's first step

        tag = Signal(_group_tag_layout(cfg), name="ci_tag")
        bp = lp.bp
        m.d.comb += [
            tag.first.eq(s_zero), tag.last.eq(last_s),
            tag.row0.eq(it.r0 + trow0), tag.trow0.eq(trow0),
            tag.nrows.eq(Mux(last_g, it.nr_last, bp)),
            *[getattr(tag, n).eq(v)
              for n, v in Drain.entry_beats(cfg, lay, tag.nrows, tag.ncols).items()],
            tag.c0.eq(it.c0), tag.ncols.eq(it.ncols),
            tag.first_ch.eq(it.first_ch), tag.last_ch.eq(it.last_ch),
            tag.wslot.eq(wslot),
            tag.x_free.eq(last_g & it.x_last_use), tag.w_free.eq(last_g & it.w_last_use),
            bufs.rd_tag.eq(tag),
            *(bufs.rd_xaddr[i].eq((xslot << log2(cfg.x_depth)) | xline) for i in range(cfg.tc)),
            bufs.rd_xgrp.eq(xgrp),
            bufs.rd_waddr.eq((wslot << log2(cfg.w_depth)) | wline),
            bufs.rd_wgrp.eq(wgrp),
            bufs.rd_rem.eq(rem),
        ]

        # Group ends at least ``nrows`` cycles apart: the row stage writes a group's rows one
        # a cycle from its shadow register (hw/row_stage.py), so the next group's sums may
        # leave the array only then. A group's sums leave ``pipe_latency`` cycles after its
        # last step and its steps issue back to back, so the test is at its first step, like
        # the credit's, and a register: ``ci_hold`` counts the cycles until the next group's
        # last step may issue, ``ci_hold_ok`` is ``ci_hold < n_s`` (``n_s`` is fixed within a
        # step, and SETUP, at least a cycle, recomputes it for the next). Both sides are at
        # most tp, so the compares take ``it.ns_tp``, min(n_s, tp), not n_s's 17 bits.
        hold = Signal(range(cfg.tp), name="ci_hold")
        hold_ok = Signal(init=1, name="ci_hold_ok")
        end_g = Signal(name="ci_end_g")                   # a group's last step issues
        with m.If(end_g):
            m.d.sync += [hold.eq(tag.nrows - 1), hold_ok.eq(tag.nrows <= it.ns_tp)]
        with m.Elif(hold != 0):
            m.d.sync += [hold.eq(hold - 1), hold_ok.eq(hold <= it.ns_tp)]
        with m.Else():
            m.d.sync += hold_ok.eq(1)

        # While idle, ``lay`` follows the command payload every cycle (so it holds the
        # accepted one from the cycle after the accept on). Its enable is a register, high
        # exactly in IDLE, in a few copies (``_rep``) that each enable a slice of ``lay``:
        # no decode and no path from ``cmd.valid`` sits in front of hundreds of enables.
        idle_rep = [Signal(init=1, name=f"ci_idle_rep{i}") for i in range(4)]
        load_in_slices(m, lay, self.cmd.payload, idle_rep)

        # START's one cycle as registers (set in PREP2, which always goes to START), one
        # per step iterator: the start of a layer resets every step counter of the loader
        # and of the compute issue (sync resets), and those nets now start at a flip-flop
        # of their own, not at the FSM's state decode (the 8 x 4's worst path on 5 Dec
        # 2026, morning, in one variant: the state -> decode -> the loader's restart ->
        # a counter's reset, 10.27 ns of wire in two hops).
        start_rep = [Signal(name=f"ci_start_rep{i}") for i in range(2)]
        m.d.sync += [r.eq(0) for r in start_rep]
        m.d.comb += [loader.start.eq(start_rep[0]), it.restart.eq(start_rep[1])]

        m.d.comb += self.cmd.ready.eq(0)
        with m.FSM(name="ci_fsm"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [en.eq(0) for en in idle_rep]
                    m.next = "PREP"
            with m.State("PREP"):
                # ``lay`` holds the command; the row tile height's choice is registered
                # from it (steps.derive_layer_params), then ``lp`` from both
                m.next = "PREP2"
            with m.State("PREP2"):
                m.d.sync += [lp.eq(lp_c), *(r.eq(1) for r in start_rep)]
                m.next = "START"
            with m.State("START"):
                m.d.sync += [x_cnt.eq(0), w_cnt.eq(0), inflight.eq(0), credit.eq(1),
                             hold.eq(0), hold_ok.eq(1),
                             x_diff.eq(0), w_diff.eq(0), xline.eq(0)]
                m.next = "SETUP"
            with m.State("SETUP"):
                # The step's counters and slots are loaded in every SETUP cycle, not under
                # the decision below: their values are stable while the compute waits (the
                # iterator and the load counts move only on the decision), nothing reads them
                # before RUN, and the decision (two small counters, the iterator's flags and
                # the credit) then drives only the state, the load counts and the takes. It
                # fanned out to every counter's enable: the 4 x 4's worst path on 9ed6a51
                # seeds 1 and 2 (4 ns of wire from the decision to the counters).
                # (The X line was zeroed on the way into SETUP.) A resident X
                # (``lp.xres``, HwConfig.x_resident) is one slot per row tile, loaded a
                # chunk per step: its slot is the row tile's parity, and its later chunks
                # follow the chunk before in the slot (the X line and group go on).
                m.d.sync += [xslot.eq(Mux(lp.xres, it.rt[0], x_use[0])),
                             wslot.eq(w_use[0]),
                             g.eq(0), s.eq(0), wline.eq(0), wgrp.eq(0),
                             xgrp.eq(Mux(lp.xres & ~it.first_ch, xgrp, 0)),
                             rem.eq(it.len), trow0.eq(0),
                             s_zero.eq(1), last_s.eq(it.ns_one), last_g.eq(it.ng_one),
                             wadv.eq(wadv_first)]
                with m.If(x_ok & w_ok & credit):
                    m.d.comb += [x_take.eq(it.x_new), w_take.eq(it.w_new)]
                    m.d.sync += [x_cnt.eq(x_cnt + it.x_new), w_cnt.eq(w_cnt + it.w_new)]
                    m.next = "RUN"
            with m.State("RUN"):
                go = ~s_zero | (credit & hold_ok)
                m.d.comb += [bufs.rd_valid.eq(go), start_g.eq(go & s_zero),
                             end_g.eq(go & last_s)]
                # The step counters restart at a group's last step whether or not it issues
                # this cycle: only a group's first step waits (credit, hold: ``go``), so a
                # waiting last step is also a first (n_s = 1), where s, wline and wgrp are 0
                # already. Without ``go`` their reset is RUN & last_s, one LUT: with it, the
                # FSM state -> go -> reset of ``ci_wline`` was the 8 x 8's worst path on
                # 78ddc47 (96.73 MHz, 8.44 of 10.34 ns wire).
                # One If/Elif chain, the reset first: ``wadv`` implies ``~last_s`` (both set
                # together, complementary), so the order changes nothing, but with the reset
                # overridden by a later increment the reset's condition took ``go`` and
                # ``wadv`` in (RUN & last_s & ~(go & wadv)): FSM state -> credit -> wadv ->
                # ``ci_wline``'s reset was the 8 x 8's worst path on both seeds of 8895828.
                with m.If(last_s):
                    m.d.sync += [s.eq(0), wline.eq(0), wgrp.eq(0)]
                with m.Elif(go & wadv):
                    m.d.sync += [wgrp.eq(0), wline.eq(wline + 1)]
                with m.Elif(go):
                    m.d.sync += wgrp.eq(wgrp + 1)
                with m.If(go):
                    with m.If(xgrp == lp.fmask):
                        m.d.sync += [xgrp.eq(0), xline.eq(xline + 1)]
                    with m.Else():
                        m.d.sync += xgrp.eq(xgrp + 1)
                    with m.If(last_s):
                        m.d.sync += [rem.eq(it.len), g.eq(g + 1), trow0.eq(trow0 + bp),
                                     s_zero.eq(1), last_s.eq(it.ns_one),
                                     last_g.eq(g == it.ng_m2), wadv.eq(wadv_first)]
                        with m.If(last_g):
                            with m.If(it.last_step):
                                m.next = "FINISH"
                            with m.Else():
                                m.d.comb += it.advance.eq(1)
                                with m.If(~lp.xres | it.last_ch):
                                    m.d.sync += xline.eq(0)
                                m.next = "SETUP"
                    with m.Else():
                        # the next step's wadv: not the last, and the group after wgrp's is
                        # B_P - 1 (0 after a wrap, wgrp + 1 otherwise)
                        m.d.sync += [s.eq(s + 1), rem.eq(rem - it.step_s),
                                     s_zero.eq(0), last_s.eq(s == it.ns_m2),
                                     wadv.eq((s != it.ns_m2)
                                             & Mux(wadv, lp.bpmask == 0,
                                                   (wgrp + 1)[:len(wgrp)] == lp.bpmask))]
            with m.State("FINISH"):
                with m.If((inflight == 0) & ~stage.r_rdy & drain.idle & (wr_pending == 0)
                          & ~push):
                    m.d.sync += [en.eq(1) for en in idle_rep]
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.cmd.ready)
        return m
