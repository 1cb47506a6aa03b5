"""The exit unit: reads one sample's int32 logits, finds top-1 and top-2, applies the exit
test and, when the sample leaves, copies its logits to its result area.

Per sample (``start`` while idle): issue the ``nb`` logit beat reads back to back; fold
each response into (top1, class, top2) as it arrives and keep the beat; after the last
response, decide; if the sample exits and ``copy`` is set, write the ``nb`` beats to
``res_addr`` and wait for their acknowledgements; then pulse ``done``. See docs/fbe.md.

``res_addr`` is taken when the sample is found to exit, not at ``start``: it must hold from
``start`` until ``done`` (the FBE's does), and so it may come from registers that settle a
few cycles after ``start`` (the FBE's result address is two register stages from its
sample index: as one path, index -> slot -> tag -> shift -> add, it was the board's worst,
24.14 ns at 40 MHz on 3994593).
"""
from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .fbe_layout import CRIT_MAX
from .interface import log2, mem_port_signature

__all__ = ["ExitUnit"]

INT32_MIN = -(1 << 31)


class ExitUnit(wiring.Component):
    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        aw = cfg.addr_width
        nbw = cfg.logit_beats.bit_length()
        clsw = max(1, (cfg.max_classes - 1).bit_length())
        super().__init__({
            "start": In(1),
            "addr": In(aw),              # logits of the sample (beat-aligned)
            "c": In(cfg.dim_width),      # number of logits
            "crit": In(1),
            "thr": In(signed(32)),
            "final": In(1),
            "res_addr": In(aw),          # where an exiting sample's logits go
            "busy": Out(1),
            "done": Out(1),              # one cycle; the outputs below hold until the next start
            "exited": Out(1),
            "cls": Out(clsw),
            "top1": Out(signed(32)),
            "top2": Out(signed(32)),
            "mem": Out(mem_port_signature(cfg)),
        })
        self._nbw = nbw

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        M = cfg.mem_bytes
        W = M // 4                      # logits per beat
        lm = log2(M)
        nbw = self._nbw + 1

        nb = Signal(nbw, name="eu_nb")
        c = Signal.like(self.c, name="eu_c")
        base = Signal.like(self.addr, name="eu_base")
        res = Signal.like(self.res_addr, name="eu_res")
        crit = Signal(name="eu_crit")
        thr = Signal(signed(32), name="eu_thr")
        final = Signal(name="eu_final")
        n_iss = Signal(nbw, name="eu_n_iss")
        n_rsp = Signal(nbw, name="eu_n_rsp")
        n_wr = Signal(nbw, name="eu_n_wr")
        n_ack = Signal(nbw, name="eu_n_ack")
        beats = Array(Signal(8 * M, name=f"eu_beat{i}") for i in range(cfg.logit_beats))
        top1 = Signal(signed(32), name="eu_top1")
        top2 = Signal(signed(32), name="eu_top2")
        cls = Signal.like(self.cls, name="eu_cls")

        # Fold a response beat into (top1, cls, top2): logits in index order, a later equal
        # value only lifts top2 (so equal maxima give a zero margin, the class the first).
        t1, t2, ci = top1, top2, cls
        for w in range(W):
            v = self.mem.rd_resp.payload[32 * w:32 * (w + 1)].as_signed()
            idx = Signal(nbw + log2(W) + 1, name=f"eu_idx{w}")
            m.d.comb += idx.eq((n_rsp << log2(W)) + w) if W > 1 else idx.eq(n_rsp)
            ok = idx < c
            n1 = Signal(signed(32), name=f"eu_t1_{w}")
            n2 = Signal(signed(32), name=f"eu_t2_{w}")
            nc = Signal.like(cls, name=f"eu_c_{w}")
            m.d.comb += [
                n1.eq(Mux(ok & (v > t1), v, t1)),
                n2.eq(Mux(ok & (v > t1), t1, Mux(ok & (v > t2), v, t2))),
                nc.eq(Mux(ok & (v > t1), idx, ci)),
            ]
            t1, t2, ci = n1, n2, nc

        m.d.comb += [self.mem.rd_resp.ready.eq(1), self.mem.wr_resp.ready.eq(1)]
        rsp = self.mem.rd_resp.valid
        with m.If(rsp):
            m.d.sync += [top1.eq(t1), top2.eq(t2), cls.eq(ci), beats[n_rsp].eq(self.mem.rd_resp.payload),
                         n_rsp.eq(n_rsp + 1)]
        m.d.sync += n_ack.eq(n_ack + self.mem.wr_resp.valid)

        margin = Signal(signed(34), name="eu_margin")
        m.d.comb += margin.eq(top1 - top2)
        passes = Mux(crit == CRIT_MAX, top1 >= thr, margin >= thr)
        m.d.comb += [self.top1.eq(top1), self.top2.eq(top2), self.cls.eq(cls)]

        rd_fire = self.mem.rd_req.valid & self.mem.rd_req.ready
        wr_fire = self.mem.wr_req.valid & self.mem.wr_req.ready
        with m.FSM(name="eu_fsm"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        nb.eq((self.c * 4 + M - 1) >> lm), c.eq(self.c), base.eq(self.addr),
                        crit.eq(self.crit), thr.eq(self.thr),
                        final.eq(self.final), n_iss.eq(0), n_rsp.eq(0), n_wr.eq(0), n_ack.eq(0),
                        top1.eq(INT32_MIN), top2.eq(INT32_MIN), cls.eq(0), self.exited.eq(0),
                    ]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.busy.eq(1), self.mem.rd_req.valid.eq(1),
                             self.mem.rd_req.payload.eq(base + (n_iss << lm))]
                with m.If(rd_fire):
                    m.d.sync += n_iss.eq(n_iss + 1)
                    with m.If(n_iss + 1 == nb):
                        m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(n_rsp == nb):
                    m.d.sync += self.exited.eq(final | passes)
                    with m.If(final | passes):
                        m.d.sync += res.eq(self.res_addr)
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "DONE"
            with m.State("WRITE"):
                m.d.comb += [self.busy.eq(1), self.mem.wr_req.valid.eq(1),
                             self.mem.wr_req.payload.addr.eq(res + (n_wr << lm)),
                             self.mem.wr_req.payload.data.eq(beats[n_wr]),
                             self.mem.wr_req.payload.strb.eq((1 << M) - 1)]
                with m.If(wr_fire):
                    m.d.sync += n_wr.eq(n_wr + 1)
                    with m.If(n_wr + 1 == nb):
                        m.next = "WACK"
            with m.State("WACK"):
                m.d.comb += self.busy.eq(1)
                with m.If(n_ack == nb):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        return m
