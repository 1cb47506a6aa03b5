"""Layer-level derived parameters and the step iterator shared by the loader and the compute.

A layer runs as steps ``for rt: for ct: for ch:`` (row tile, column tile, reduction
chunk); see docs/architecture.md. Everything here is shifts, adds and compares: all
tile sizes and the run-time policy are powers of two.
"""
from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data

from .config import HwConfig
from .interface import layer_desc_layout, log2

__all__ = ["layer_params_layout", "derive_layer_params", "StepIter"]


def layer_params_layout(cfg: HwConfig) -> data.StructLayout:
    dim = cfg.dim_width
    sh = range(log2(cfg.lanes) + log2(max(cfg.x_buf_elems, cfg.w_buf_elems)) + 2)
    return data.StructLayout({
        "lbp": range(log2(cfg.tp) + 1),     # log2 B_P
        "lk": range(log2(cfg.tc) + 1),      # log2 k
        "lseg": range(log2(cfg.tp) + 1),    # log2 (tp / B_P)
        "ls": sh,                           # log2 S
        "lf": range(log2(cfg.tc) + 1),      # log2 F
        "lcm": sh,                          # log2 chunk_max
        "n_rt": unsigned(dim), "n_ct": unsigned(dim), "n_ch": unsigned(dim),
        "stride": unsigned(cfg.addr_width),  # bytes per X row and per W row
    })


def derive_layer_params(m: Module, cfg: HwConfig, desc, lp):
    """Drive ``lp`` (a ``layer_params_layout`` view) combinationally from ``desc``."""
    ltp, ltc = log2(cfg.tp), log2(cfg.tc)
    lx = log2(cfg.x_buf_elems // cfg.tr)
    lw = log2(cfg.w_buf_elems // cfg.tc)
    lm = log2(cfg.mem_bytes)
    lcm = Signal.like(lp.lcm, name="lp_lcm")
    m.d.comb += lcm.eq(Mux(desc.log2_k + lw < lx, desc.log2_k + lw, lx))
    lf = Signal.like(lp.lf, name="lp_lf")
    m.d.comb += lf.eq(ltc - desc.log2_k)
    pbytes = desc.p * cfg.elem_bytes
    m.d.comb += [
        lp.lbp.eq(desc.log2_bp),
        lp.lk.eq(desc.log2_k),
        lp.lseg.eq(ltp - desc.log2_bp),
        lp.ls.eq(desc.log2_k + ltp - desc.log2_bp),
        lp.lf.eq(lf),
        lp.lcm.eq(lcm),
        lp.n_rt.eq((desc.r + cfg.tr - 1) >> log2(cfg.tr)),
        lp.n_ct.eq((desc.c + (1 << lf) - 1) >> lf),
        lp.n_ch.eq((desc.p + (1 << lcm) - 1) >> lcm),
        lp.stride.eq(((pbytes + cfg.mem_bytes - 1) >> lm) << lm),
    ]


class StepIter(Elaboratable):
    """Walks the steps of a layer; outputs describe the current step.

    ``restart`` goes to step 0, ``advance`` to the next one; the outputs are valid from
    the cycle after either. Address offsets are kept incrementally (no multipliers).
    """

    def __init__(self, cfg: HwConfig, desc, lp):
        self.cfg, self.desc, self.lp = cfg, desc, lp
        dim = cfg.dim_width
        aw = cfg.addr_width
        self.restart = Signal()
        self.advance = Signal()
        self.rt = Signal(dim)
        self.ct = Signal(dim)
        self.ch = Signal(dim)
        self.r0 = Signal(dim + 1)
        self.c0 = Signal(dim + 1)
        self.p0 = Signal(dim + 1)
        self.rows = Signal(range(cfg.tr + 1))      # rows of this row tile
        self.ncols = Signal(range(cfg.tc + 1))     # columns of this column tile
        self.len = Signal(dim + 1)                 # reduction elements of this chunk
        self.n_s = Signal(dim + 1)                 # cycles per group
        self.n_g = Signal(range(cfg.tr + 1))       # groups
        self.row_off = Signal(aw)                  # r0 * stride
        self.col_off = Signal(aw)                  # c0 * stride
        self.p_off = Signal(aw)                    # p0 * elem_bytes
        self.first_ch = Signal()
        self.last_ch = Signal()
        self.last_step = Signal()
        self.x_new = Signal()        # this step loads X
        self.w_new = Signal()        # this step loads W (and bias)
        self.x_last_use = Signal()   # the next step loads X again (or there is none)
        self.w_last_use = Signal()

    def elaborate(self, platform):
        m = Module()
        cfg, d, lp = self.cfg, self.desc, self.lp
        ltr = log2(cfg.tr)
        eb = cfg.elem_bytes
        last_rt = self.rt == lp.n_rt - 1
        last_ct = self.ct == lp.n_ct - 1
        last_ch = self.ch == lp.n_ch - 1
        single = (lp.n_ct == 1) & (lp.n_ch == 1)

        with m.If(self.restart):
            m.d.sync += [self.rt.eq(0), self.ct.eq(0), self.ch.eq(0),
                         self.r0.eq(0), self.c0.eq(0), self.p0.eq(0),
                         self.row_off.eq(0), self.col_off.eq(0), self.p_off.eq(0)]
        with m.Elif(self.advance):
            with m.If(~last_ch):
                m.d.sync += [self.ch.eq(self.ch + 1), self.p0.eq(self.p0 + (1 << lp.lcm)),
                             self.p_off.eq(self.p_off + ((1 << lp.lcm) * eb))]
            with m.Else():
                m.d.sync += [self.ch.eq(0), self.p0.eq(0), self.p_off.eq(0)]
                with m.If(~last_ct):
                    m.d.sync += [self.ct.eq(self.ct + 1), self.c0.eq(self.c0 + (1 << lp.lf)),
                                 self.col_off.eq(self.col_off + (lp.stride << lp.lf))]
                with m.Else():
                    m.d.sync += [self.ct.eq(0), self.c0.eq(0), self.col_off.eq(0),
                                 self.rt.eq(self.rt + 1), self.r0.eq(self.r0 + cfg.tr),
                                 self.row_off.eq(self.row_off + (lp.stride << ltr))]

        rows_left = d.r - self.r0
        cols_left = d.c - self.c0
        len_left = d.p - self.p0
        cm = Signal(range(max(cfg.x_buf_elems, cfg.w_buf_elems) * cfg.tc + 1))
        m.d.comb += cm.eq(1 << lp.lcm)
        m.d.comb += [
            self.rows.eq(Mux(rows_left < cfg.tr, rows_left, cfg.tr)),
            self.ncols.eq(Mux(cols_left < (1 << lp.lf), cols_left, 1 << lp.lf)),
            self.len.eq(Mux(len_left < cm, len_left, cm)),
            self.n_s.eq((self.len + (1 << lp.ls) - 1) >> lp.ls),
            self.n_g.eq((self.rows + (1 << lp.lbp) - 1) >> lp.lbp),
            self.first_ch.eq(self.ch == 0),
            self.last_ch.eq(last_ch),
            self.last_step.eq(last_rt & last_ct & last_ch),
            self.x_new.eq((lp.n_ch > 1) | (self.ct == 0)),
            self.w_new.eq(~single | (self.rt == 0)),
            self.x_last_use.eq((lp.n_ch > 1) | last_ct),
            self.w_last_use.eq(~single | last_rt),
        ]
        return m
