"""Double-buffered operand buffers: element-wide X and W banks, write crossbar, operand fetch.

The loader writes up to one beat (``E`` elements) per cycle, each element already mapped
to its bank and line (docs/architecture.md, "Buffers"); no two elements of a beat share
a bank. The compute reads every bank at one address per cycle and the fetch stage
selects, per PE and lane, the element the policy puts there, zeroing lanes past the
end of the reduction.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .interface import log2

__all__ = ["OperandBuffers", "elem_write_layout"]


def elem_write_layout(cfg: HwConfig) -> data.StructLayout:
    depth = 2 * max(cfg.x_depth, cfg.w_depth)
    return data.StructLayout({
        "en": 1,
        "bank": range(cfg.lanes),
        "addr": range(depth),        # slot * depth + line
        "data": signed(cfg.data_width),
    })


class OperandBuffers(wiring.Component):
    """X and W banks with their write crossbar and the three-stage operand fetch.

    Fetch: addresses and selects presented with ``rd_valid`` at cycle t give operands at
    ``x``/``w`` with ``op_valid`` at cycle t + ``latency``: bank read, bank output
    register (and select decode), select.
    """

    latency = 3

    def __init__(self, cfg: HwConfig, *, tag_width: int = 1):
        self.cfg = cfg
        e = cfg.elems_per_beat
        op = data.ArrayLayout(signed(cfg.data_width), cfg.lanes)
        super().__init__({
            # layer policy, stable while a layer runs
            "lbp": In(range(log2(cfg.tp) + 1)),
            "lk": In(range(log2(cfg.tc) + 1)),
            "lseg": In(range(log2(cfg.tp) + 1)),
            # write side (loader)
            "wr_x": In(1),                      # the beat goes to X (else W)
            "wr": In(data.ArrayLayout(elem_write_layout(cfg), e)),
            # read side (compute)
            "rd_valid": In(1),
            "rd_tag": In(tag_width),
            "rd_xaddr": In(range(2 * cfg.x_depth)),
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
        cfg = self.cfg
        tc, tp, n = cfg.tc, cfg.tp, cfg.lanes

        # Write side, two registers between the loader and the banks, so that each long wire
        # has a cycle of its own: the write beat's lines and data are copied into ``tc``
        # registers (``_rep``, kept apart by the synthesis flow), each reaching only the
        # ``tp`` bank positions ``g*tp .. g*tp + tp-1``, beside which element of the beat
        # hits each of those positions (decoded from the beat's bank numbers on the way in);
        # there each position selects its element (X bank ``b`` and W bank ``b`` share one
        # select) into a register beside its two banks. A write lands two cycles after the
        # beat; the loader counts a load done one cycle later than its last beat's write
        # reaches the banks (docs/cycle_model.md, "Response decode").
        e = cfg.elems_per_beat
        rep_layout = data.ArrayLayout(data.StructLayout({
            "addr": elem_write_layout(cfg)["addr"].shape, "data": unsigned(cfg.data_width)}), e)
        wr_rep = [Signal(rep_layout, name=f"w1_wr_rep{g}") for g in range(tc)]
        wx_rep = [Signal(name=f"w1_x_rep{g}") for g in range(tc)]
        # hit_rep[g][j*e + i]: element i of the beat goes to bank position g*tp + j
        hit_rep = [Signal(tp * e, name=f"w1_hit_rep{g}") for g in range(tc)]
        for g in range(tc):
            m.d.sync += [wr_rep[g][i].addr.eq(el.addr) for i, el in enumerate(self.wr)]
            m.d.sync += [wr_rep[g][i].data.eq(el.data.as_unsigned()) for i, el in enumerate(self.wr)]
            m.d.sync += wx_rep[g].eq(self.wr_x)
            for j in range(tp):
                m.d.sync += [hit_rep[g][j * e + i].eq(el.en & (el.bank == g * tp + j))
                             for i, el in enumerate(self.wr)]
        sel_layout = data.StructLayout({"x": 1, "w": 1,
                                        "addr": elem_write_layout(cfg)["addr"].shape,
                                        "data": unsigned(cfg.data_width)})
        wsel = []
        for bank in range(n):
            g, j = divmod(bank, tp)
            wr, wx = wr_rep[g], wx_rep[g]
            # At most one element of a beat hits a bank: an AND-OR select, not a priority chain.
            hits = [hit_rep[g][j * e + i] for i in range(e)]
            addr_or, data_or = 0, 0
            for el, hit in zip(wr, hits):
                addr_or = addr_or | Mux(hit, el.addr, 0)
                data_or = data_or | Mux(hit, el.data, 0)
            sel = Signal(sel_layout, name=f"w2_sel{bank}")
            hit = Cat(*hits).any()
            m.d.sync += [sel.x.eq(hit & wx), sel.w.eq(hit & ~wx), sel.addr.eq(addr_or),
                         sel.data.eq(data_or)]
            wsel.append(sel)

        xdata, wdata = [], []
        for which, depth, out in (("x", cfg.x_depth, xdata), ("w", cfg.w_depth, wdata)):
            is_x = which == "x"
            for bank in range(n):
                # The loader never writes a slot the compute reads (double buffering), so
                # the ports never collide: ``no_rw_check`` spares yosys the read-old-data
                # emulation (registers and a compare-and-select behind every bank). Yosys
                # 0.23 honours it where it builds the synchronous read port itself, so the
                # port is asynchronous here with its register beside it (same timing).
                mem = memory.Memory(shape=signed(cfg.data_width), depth=2 * depth, init=[],
                                    attrs={"no_rw_check": 1})
                m.submodules[f"{which}bank{bank}"] = mem
                wp = mem.write_port()
                rp = mem.read_port(domain="comb")
                rd = Signal(signed(cfg.data_width), name=f"f1_{which}b{bank}")
                m.d.sync += rd.eq(rp.data)
                sel = wsel[bank]
                m.d.comb += [wp.en.eq(sel.x if is_x else sel.w), wp.addr.eq(sel.addr),
                             wp.data.eq(sel.data)]
                m.d.comb += rp.addr.eq(self.rd_xaddr if is_x else self.rd_waddr)
                out.append(rd)

        # Stage 1 (bank data valid): the bank outputs are registered as they are (a DP16KD's
        # clock-to-output leaves no time for the wires to the selects in the same cycle);
        # the read request is registered beside them (its group and chunk fields once per
        # PE, below).
        f1 = Signal(data.StructLayout({"valid": 1, "tag": len(self.rd_tag)}), name="f1_req")
        m.d.sync += [f1.valid.eq(self.rd_valid), f1.tag.eq(self.rd_tag)]
        xq = [Signal(signed(cfg.data_width), name=f"f2_xb{b}") for b in range(n)]
        wq = [Signal(signed(cfg.data_width), name=f"f2_wb{b}") for b in range(n)]
        m.d.sync += [q.eq(d) for q, d in zip(xq + wq, xdata + wdata)]

        # Stage 2: the selects and the lane mask, decoded from the registered request, so
        # that stage 3 is only the bank multiplexers.
        f2 = Signal(data.StructLayout({"valid": 1, "tag": len(self.rd_tag)}), name="f2_ctl")
        m.d.sync += [f2.valid.eq(f1.valid), f2.tag.eq(f1.tag)]
        # Per-layer constants of the selects (the policy is stable while a layer runs; they
        # are registered, valid from the cycle after ``lk``/``lseg`` change).
        kmask = Signal(range(tc), name="f0_kmask")
        segmask = Signal(range(tp), name="f0_segmask")
        m.d.sync += [kmask.eq((1 << self.lk) - 1), segmask.eq((1 << self.lseg) - 1)]
        # X and W selects per PE and lane: register copies (``_rep``, kept apart by the
        # synthesis flow), so that each drives the multiplexers of one lane (its 8 bits),
        # placed beside them, instead of one lane of every PE or every lane of a PE.
        # They come from per-PE copies of the request's group and chunk fields (``f1_*_rep``)
        # and of the policy (``f0_*_rep``), so that no net reaches every lane of the array.
        xsel = [[Signal(range(tc), name=f"f2_xgrp_rep{pe}_{l}") for l in range(tp)]
                for pe in range(tc)]
        wsel = [[Signal(range(tp), name=f"f2_wl_rep{pe}_{l}") for l in range(tp)]
                for pe in range(tc)]
        lmask = Signal(n, name="f2_lmask")
        ls_ = [Signal(range(tp), name=f"f0_ls_{l}") for l in range(tp)]
        m.d.sync += [r.eq(l & segmask) for l, r in enumerate(ls_)]
        for pe in range(tc):
            xgrp = Signal.like(self.rd_xgrp, name=f"f1_xgrp_rep{pe}")
            wgrp = Signal.like(self.rd_wgrp, name=f"f1_wgrp_rep{pe}")
            rem = Signal.like(self.rd_rem, name=f"f1_rem_rep{pe}")
            lk = Signal.like(self.lk, name=f"f0_lk_rep{pe}")
            lseg = Signal.like(self.lseg, name=f"f0_lseg_rep{pe}")
            m.d.sync += [xgrp.eq(self.rd_xgrp), wgrp.eq(self.rd_wgrp), rem.eq(self.rd_rem),
                         lk.eq(self.lk), lseg.eq(self.lseg)]
            pk = Signal(range(tc), name=f"f0_pk_{pe}")
            m.d.sync += pk.eq(pe & kmask)
            m.d.sync += [r.eq((xgrp << lk) | pk) for r in xsel[pe]]
            for l in range(tp):
                m.d.sync += wsel[pe][l].eq((wgrp << lseg) | ls_[l])
                q = Signal(range(n), name=f"f0_q_{pe}_{l}")    # lane's element within S
                m.d.sync += q.eq(((pe & kmask) << lseg) | (l & segmask))
                m.d.sync += lmask[pe * tp + l].eq(q < rem)

        # Stage 3: per-PE group select for X, per-lane replication select for W, masking.
        for pe in range(tc):
            for l in range(tp):
                xv = Signal(signed(cfg.data_width), name=f"f2_x_{pe}_{l}")
                with m.Switch(xsel[pe][l]):
                    for g in range(tc):
                        with m.Case(g):
                            m.d.comb += xv.eq(xq[g * tp + l])
                wv = Signal(signed(cfg.data_width), name=f"f2_w_{pe}_{l}")
                with m.Switch(wsel[pe][l]):
                    for c in range(tp):
                        with m.Case(c):
                            m.d.comb += wv.eq(wq[pe * tp + c])
                m.d.sync += [self.x[pe * tp + l].eq(Mux(lmask[pe * tp + l], xv, 0)),
                             self.w[pe * tp + l].eq(wv)]
        m.d.sync += [self.op_valid.eq(f2.valid), self.op_tag.eq(f2.tag)]
        return m
