"""Layer-level derived parameters and the step iterator shared by the loader and the compute.

A layer runs as steps ``for rt: for ct: for ch:`` (row tile, column tile, reduction
chunk); see docs/architecture.md. Everything here is shifts, adds and compares: all
tile sizes and the run-time policy are powers of two.

Timing: every tile but the last of its kind is full, so a step's sizes are one of two
per-layer values chosen by a ``last_*`` flag (row tiles and chunks: three, the one
before the last may be a half, ``pen`` / ``cpen``; see ``HwConfig.row_tile_sizes`` and
``HwConfig.chunk_sizes``). The flags are registers updated with the
step counters, and the per-layer values are registers recomputed from ``lp`` (one and
two cycles after it), so no per-step size is more than a multiplexer away from a flop.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data

from .config import HwConfig
from .interface import layer_desc_layout, log2

__all__ = ["layer_params_layout", "derive_layer_params", "StepIter"]


def _chunk_range(cfg: HwConfig) -> int:
    return max(cfg.x_buf_elems, cfg.w_buf_elems) * cfg.tc + 1


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
        # decoded: B_P, F, S and their masks (value - 1), k - 1, tp / B_P - 1
        "bp": range(cfg.tp + 1), "bpmask": range(cfg.tp),
        "f": range(cfg.tc + 1), "fmask": range(cfg.tc),
        "s": range(cfg.lanes + 1), "smask": range(cfg.lanes),
        "kmask": range(cfg.tc), "segmask": range(cfg.tp),
        "ltr": range(log2(cfg.tr_max) + 1),      # log2 rows of a row tile (HwConfig.tile_rows)
        "trm1": range(cfg.tr_max),               # rows of a row tile - 1
        "rt_one": 1, "ct_one": 1, "ch_one": 1,   # one row tile / column tile / chunk
        "xres": 1,                               # chunked, X resident (HwConfig.x_resident)
        "rbal": 1,                               # balanced last two row tiles (row_tile_sizes)
        "rpen0": 1,                              # ... and the first row tile is the first of them
        "rm": unsigned(max(1, log2(cfg.tr_max))),  # rows of the last row tile - 1
        "cmod": unsigned(max(1, log2(cfg.tc))),  # (C - 1) mod F
        "cbal": 1,                               # balanced last two chunks (chunk_sizes)
        "cpen0": 1,                              # ... and the first chunk is the first of them
        # the last chunk's length - 1: (P - 1) mod chunk_max, plus chunk_max / 2 if balanced
        "pm": unsigned(dim),
        "stride": unsigned(cfg.addr_width),  # bytes per X row and per W row
    })


def derive_layer_params(m: Module, cfg: HwConfig, desc, lp):
    """Drive ``lp`` (a ``layer_params_layout`` view) from ``desc``: combinationally but for
    the row tile height's choice, a register, so ``lp`` is valid from the second cycle after
    ``desc`` settles."""
    ltp, ltc, ltr = log2(cfg.tp), log2(cfg.tc), log2(cfg.tr_max)
    lm = log2(cfg.mem_bytes)
    dim = cfg.dim_width
    lf = Signal.like(lp.lf, name="lp_lf")
    m.d.comb += lf.eq(ltc - desc.log2_k)
    # Per stacking factor, compares against constants (no variable shifts before a carry chain).
    ks = range(ltc + 1)
    # Row tiles (HwConfig.tile_rows): ``rs`` halvings of tr_max. Short rows (P <= k*tp)
    # take tr_max (when it is 2*tr); otherwise the fewest halvings of tr with which the
    # buffers hold all of P, or tr if no count down to tr_min does. Each test is one
    # compare of P with a constant of the stacking.
    n_rs = log2(cfg.tr_max // cfg.tr_min) + 1
    r_tr = log2(cfg.tr_max // cfg.tr)                 # the halvings that give tr
    rows_of = [cfg.tr_max >> r for r in range(n_rs)]

    def fit_lim(lk, r):
        lim = cfg.chunk_max(1 << lk, rows_of[r])
        return lim if r >= r_tr else min(lim, cfg.tp << lk)

    fits = [[desc.p <= fit_lim(lk, r) for r in range(n_rs)] for lk in ks]
    # X alone holds P at the height (HwConfig.x_resident, when W does not): the same for
    # every stacking factor. For heights up to tr, where P fits both buffers exactly when
    # it fits X and W holds it, the choice is the first height at which X holds P.
    xfit = [desc.p <= cfg.x_buf_elems // rows_of[r] for r in range(n_rs)]
    rs_k = []
    for lk in ks:
        v = Const(r_tr, range(n_rs + 1))
        for r in reversed(range(n_rs)):
            v = Mux(xfit[r] if r >= r_tr else fits[lk][r], r, v)
        rs_k.append(v)
    xres_k = [~fits[lk][-1] & xfit[-1] for lk in ks]
    # The choice is registered (``lp_rs``, following ``desc`` every cycle): the chain P
    # compare -> height -> the values selected by it was the 8 x 4's worst path (10-11 ns
    # from the core's ``lay`` to ``lp``, 4 Dec 2026), so ``lp`` is valid two cycles after
    # ``desc`` settles (the core's PREP and PREP2).
    rs_c = Signal(range(n_rs + 1), name="lp_rs_c")   # (never 0 bits wide: lint)
    m.d.comb += rs_c.eq(Array(rs_k)[desc.log2_k])
    rs = Signal(range(n_rs + 1), name="lp_rs")
    m.d.sync += rs.eq(rs_c)
    ct_one = Array(desc.c <= (cfg.tc >> lk) for lk in ks)[desc.log2_k]
    ch_one = Array(fits[lk][-1] for lk in ks)[desc.log2_k]
    lcm = Signal.like(lp.lcm, name="lp_lcm")
    m.d.comb += lcm.eq(Array(Array(log2(cfg.chunk_max(1 << lk, rows)) for rows in rows_of)
                             for lk in ks)[desc.log2_k][rs])
    pmask = Signal(dim, name="lp_pmask")
    m.d.comb += pmask.eq(Array(Array(min(cfg.chunk_max(1 << lk, rows), 1 << dim) - 1
                                     for rows in rows_of) for lk in ks)[desc.log2_k][rs])
    trows = Signal(range(cfg.tr_max + 1), name="lp_trows")
    m.d.comb += trows.eq(Array(rows_of)[rs])
    cmask = Array((cfg.tc >> lk) - 1 for lk in ks)[desc.log2_k]
    # The last two chunks are balanced (HwConfig.chunk_sizes) when the remainder is under
    # half a chunk. A chunk is, per stacking factor, one of two constants: the W buffer's
    # limit when X is resident (any height), else the chunk at row tiles of ``tr`` rows;
    # so a test of P - 1's bits against each: (P - 1) mod cm < cm/2 - 1, i.e. bit
    # log2(cm) - 1 clear and the bits below it not all ones.
    pm1 = desc.p - 1
    cbal_k, cpen0_k = [], []
    for lk in ks:
        bs, ps = [], []
        for res, rows in ((0, cfg.tr), (1, cfg.tr_min)):
            cmv = cfg.chunk_max(1 << lk, rows)
            lc = log2(cmv)
            if not cfg.chunk_balances(1 << lk, rows) or lc >= dim:
                bs.append(Const(0)), ps.append(Const(0))
                continue
            b = Signal(name=f"lp_cbal_{lk}_{res}")
            m.d.comb += b.eq(~fits[lk][-1] & ~pm1[lc - 1] & (pm1[:lc - 1] != (cmv >> 1) - 1))
            p0 = Signal(name=f"lp_cpen0_{lk}_{res}")
            m.d.comb += p0.eq(b & (pm1[lc:dim] == 1))
            bs.append(b), ps.append(p0)
        cbal_k.append(Mux(xres_k[lk], bs[1], bs[0]))
        cpen0_k.append(Mux(xres_k[lk], ps[1], ps[0]))
    cbal = Signal(name="lp_cbal_sel")
    m.d.comb += cbal.eq(Array(cbal_k)[desc.log2_k])
    ls = Signal.like(lp.ls, name="lp_ls")
    lseg = Signal.like(lp.lseg, name="lp_lseg")
    m.d.comb += [ls.eq(desc.log2_k + ltp - desc.log2_bp), lseg.eq(ltp - desc.log2_bp)]
    pbytes = desc.p * cfg.elem_bytes
    # The last two row tiles are balanced (HwConfig.row_tile_sizes) when the remainder is
    # under half a tile: rows/2 and rows/2 + remainder instead of rows and remainder.
    # Computed for every candidate tile height from R alone, in parallel with the choice
    # of the height from P, then selected by it: the chain P compare -> height -> R's
    # remainder -> compare -> add was the 8 x 4's worst path once short rows added a
    # height (11.07 ns, 4 Dec 2026).
    rl_w = max(1, ltr)
    rt_one_c, rbal_c, rm_c, rpen0_c = [], [], [], []
    for rows in rows_of:
        raw = Signal(rl_w, name=f"lp_rm_raw_{rows}")
        m.d.comb += raw.eq(((desc.r - 1)[:rl_w] & (rows - 1)) if ltr else 0)
        one = Signal(name=f"lp_rt_one_{rows}")
        m.d.comb += one.eq(desc.r <= rows)
        bal = Signal(name=f"lp_rbal_{rows}")
        m.d.comb += bal.eq(~one & (raw < rows // 2 - 1) if rows >= 4 else 0)
        rm_r = Signal(rl_w, name=f"lp_rm_{rows}")
        m.d.comb += rm_r.eq(raw + Mux(bal, rows >> 1, 0))
        pen = Signal(name=f"lp_rpen0_{rows}")
        m.d.comb += pen.eq(bal & (desc.r <= 2 * rows))
        rt_one_c.append(one), rbal_c.append(bal), rm_c.append(rm_r), rpen0_c.append(pen)
    rt_one = Signal(name="lp_rt_one")
    rbal = Signal(name="lp_rbal")
    m.d.comb += [rt_one.eq(Array(rt_one_c)[rs]), rbal.eq(Array(rbal_c)[rs])]
    m.d.comb += [
        lp.lbp.eq(desc.log2_bp),
        lp.lk.eq(desc.log2_k),
        lp.lseg.eq(lseg),
        lp.ls.eq(ls),
        lp.lf.eq(lf),
        lp.lcm.eq(lcm),
        lp.bp.eq(1 << desc.log2_bp), lp.bpmask.eq((1 << desc.log2_bp) - 1),
        lp.f.eq(1 << lf), lp.fmask.eq((1 << lf) - 1),
        lp.s.eq(1 << ls), lp.smask.eq((1 << ls) - 1),
        lp.kmask.eq((1 << desc.log2_k) - 1), lp.segmask.eq((1 << lseg) - 1),
        lp.ltr.eq(ltr - rs),
        lp.trm1.eq(trows - 1),
        lp.rt_one.eq(rt_one),
        lp.rbal.eq(rbal),
        lp.rpen0.eq(Array(rpen0_c)[rs]),
        lp.ct_one.eq(ct_one),
        lp.ch_one.eq(ch_one),
        lp.xres.eq(Array(xres_k)[desc.log2_k]),
        lp.rm.eq(Array(rm_c)[rs]),
        lp.cmod.eq((desc.c - 1)[:len(lp.cmod)] & cmask),
        lp.cbal.eq(cbal),
        lp.cpen0.eq(Array(cpen0_k)[desc.log2_k]),
        lp.pm.eq(((desc.p - 1)[:dim] & pmask) | Mux(cbal, (pmask >> 1) + 1, 0)),
        lp.stride.eq(((pbytes + cfg.mem_bytes - 1) >> lm) << lm),
    ]


class StepIter(Elaboratable):
    """Walks the steps of a layer; outputs describe the current step.

    ``restart`` goes to step 0, ``advance`` to the next one; the outputs are valid from
    the cycle after either. ``lp`` must be stable from the cycle of ``restart`` on, and
    ``advance`` must not come before the second cycle after ``restart``. Address offsets
    are kept incrementally (no multipliers).
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
        self.rows = Signal(range(cfg.tr_max + 1))  # rows of this row tile
        self.ncols = Signal(range(cfg.tc + 1))     # columns of this column tile
        self.len = Signal(dim + 1)                 # reduction elements of this chunk
        self.n_s = Signal(dim + 1)                 # cycles per group
        self.n_g = Signal(range(cfg.tr_max + 1))   # groups
        self.row_off = Signal(aw)                  # r0 * stride
        self.col_off = Signal(aw)                  # c0 * stride
        self.p_off = Signal(aw)                    # p0 * elem_bytes
        self.first_ct = Signal()
        self.first_ch = Signal()
        self.last_rt = Signal()
        self.last_ct = Signal()
        self.last_ch = Signal()
        self.last_step = Signal()
        self.x_new = Signal()        # this step loads X
        self.w_new = Signal()        # this step loads W (and bias)
        self.x_last_use = Signal()   # the next step loads X again (or there is none)
        self.w_last_use = Signal()
        # Sizes for counters that end on a register compare (valid like the outputs above;
        # the ``_m2`` values and ``ns_tp`` from the second cycle after ``restart``).
        self.rows_m1 = Signal(range(cfg.tr_max))    # rows - 1
        self.ncols_m1 = Signal(range(cfg.tc))       # ncols - 1
        self.ns_one = Signal()                      # n_s == 1
        self.ns_m2 = Signal(dim + 1)                # n_s - 2 (when n_s >= 2)
        self.ns_tp = Signal(range(cfg.tp + 1))      # min(n_s, tp), for compares with rows
        self.ng_one = Signal()                      # n_g == 1
        self.ng_m2 = Signal(range(cfg.tr_max + 1))  # n_g - 2 (when n_g >= 2)
        self.nr_last = Signal(range(cfg.tp + 1))    # rows of the last group
        self.nb_m1 = Signal(dim + 1)                # memory beats per row of the chunk - 1
        self.nv_last = Signal(range(cfg.elems_per_beat + 1))  # elements of a row's last beat
        self.step_s = Signal(range(cfg.lanes + 1))  # S, reduction elements per cycle
        self.first_rt = Signal()
        # The next row tile, for the loader's X parts (registers following the row tile
        # counter: valid from the second cycle after ``restart`` or an advance of the row
        # tile, the third for ``nx_rows_m1``): its rows - 1 and its row offset; and
        # ``lnct``, floor(log2(column tiles - 1)), from the third cycle after ``restart``.
        self.nx_rows_m1 = Signal(range(cfg.tr_max))
        self.nx_row_off = Signal(aw)
        self.lnct = Signal(range(dim))

    def elaborate(self, platform):
        m = Module()
        cfg, d, lp = self.cfg, self.desc, self.lp
        dim, ltr = cfg.dim_width, log2(cfg.tr_max)
        eb, E = cfg.elem_bytes, cfg.elems_per_beat
        lE = log2(E)

        # ---- per-layer values, registered from lp (valid one cycle after restart) ---------
        def reg(name, shape, value):
            r = Signal(shape, name=f"it_{name}")
            m.d.sync += r.eq(value)
            return r

        cmr = _chunk_range(cfg)
        cm_c = Signal(range(cmr), name="it_cm_c")
        m.d.comb += cm_c.eq(1 << lp.lcm)
        cm = reg("cm", range(cmr), cm_c)                                   # chunk_max
        f = lp.f                                                           # F
        len_last = reg("len_last", dim + 1, lp.pm + 1)
        rows_last = reg("rows_last", range(cfg.tr_max + 1), lp.rm + 1)
        ncols_last = reg("ncols_last", range(cfg.tc + 1), lp.cmod + 1)
        nsf = reg("nsf", dim + 1, cm_c >> lp.ls)
        nsl = reg("nsl", dim + 1, (lp.pm >> lp.ls) + 1)
        nsf_one = reg("nsf_one", 1, lp.lcm == lp.ls)
        # the first of two balanced last chunks (``cpen``): half a chunk
        cmh = reg("cmh", range(cmr), cm_c >> 1)
        nsh = reg("nsh", dim + 1, (cm_c >> 1) >> lp.ls)
        nsh_one = reg("nsh_one", 1, lp.lcm == lp.ls + 1)
        nbh_m1 = reg("nbh_m1", dim + 1, (cm_c >> (lE + 1)) - 1)
        nsl_one = reg("nsl_one", 1, (lp.pm >> lp.ls) == 0)
        ngf_m1 = reg("ngf_m1", range(cfg.tr_max), lp.trm1 >> lp.lbp)
        ngl_m1 = reg("ngl_m1", range(cfg.tr_max), lp.rm >> lp.lbp)
        nrf = reg("nrf", range(cfg.tp + 1), (lp.trm1 & lp.bpmask) + 1)
        nrl = reg("nrl", range(cfg.tp + 1), (lp.rm & lp.bpmask) + 1)
        nbf_m1 = reg("nbf_m1", dim + 1, (cm_c >> lE) - 1)
        nbl_m1 = reg("nbl_m1", dim + 1, lp.pm >> lE)
        nvl = reg("nvl", range(E + 1), (lp.pm & (E - 1)) + 1)
        n_rt_m1 = reg("n_rt_m1", dim, (d.r - 1)[:dim] >> lp.ltr)
        n_ct_m1 = reg("n_ct_m1", dim, (d.c - 1)[:dim] >> lp.lf)
        n_ch_m1 = reg("n_ch_m1", dim, (d.p - 1)[:dim] >> lp.lcm)
        stride_f = reg("stride_f", cfg.addr_width, lp.stride << lp.lf)
        stride_r = reg("stride_r", cfg.addr_width, lp.stride << lp.ltr)     # bytes per row tile
        trows = reg("trows", range(cfg.tr_max + 1), lp.trm1 + 1)
        # the first of two balanced last row tiles (``pen``): half a tile
        trm1_h = reg("trm1_h", range(cfg.tr_max), lp.trm1 >> 1)
        stride_rh = reg("stride_rh", cfg.addr_width, (lp.stride << lp.ltr) >> 1)
        trows_h = reg("trows_h", range(cfg.tr_max + 1), (lp.trm1 >> 1) + 1)
        ngh_m1 = reg("ngh_m1", range(cfg.tr_max), (lp.trm1 >> 1) >> lp.lbp)
        nrh = reg("nrh", range(cfg.tp + 1), ((lp.trm1 >> 1) & lp.bpmask) + 1)
        p_step = reg("p_step", cfg.addr_width, cm_c * eb)
        p_step_h = reg("p_step_h", cfg.addr_width, (cm_c * eb) >> 1)
        # second stage (valid two cycles after restart, before the first advance)
        nsf_m2 = reg("nsf_m2", dim + 1, nsf - 2)
        nsl_m2 = reg("nsl_m2", dim + 1, nsl - 2)
        ngf_m2 = reg("ngf_m2", range(cfg.tr_max + 1), ngf_m1 - 1)
        ngl_m2 = reg("ngl_m2", range(cfg.tr_max + 1), ngl_m1 - 1)
        n_rt_m2 = reg("n_rt_m2", dim, n_rt_m1 - 1)
        n_rt_m3 = reg("n_rt_m3", dim, n_rt_m1 - 2)
        ngh_m2 = reg("ngh_m2", range(cfg.tr_max + 1), ngh_m1 - 1)
        n_ct_m2 = reg("n_ct_m2", dim, n_ct_m1 - 1)
        n_ch_m2 = reg("n_ch_m2", dim, n_ch_m1 - 1)
        n_ch_m3 = reg("n_ch_m3", dim, n_ch_m1 - 2)
        nsh_m2 = reg("nsh_m2", dim + 1, nsh - 2)
        # n_s clamped to tp: a group's rows (at most B_P <= tp) compare with it in a few bits
        # instead of n_s's dim + 1 (the compute issue's ``ci_hold_ok``: the 16 x 8's worst
        # path routed with router1 on 81c736a, 97.50 MHz, a 17-bit compare behind the rows'
        # select)
        nsf_tp = reg("nsf_tp", range(cfg.tp + 1), Mux(nsf >= cfg.tp, cfg.tp, nsf))
        nsl_tp = reg("nsl_tp", range(cfg.tp + 1), Mux(nsl >= cfg.tp, cfg.tp, nsl))
        nsh_tp = reg("nsh_tp", range(cfg.tp + 1), Mux(nsh >= cfg.tp, cfg.tp, nsh))

        # ---- step counters and their flags ----------------------------------------------
        first_rt = Signal(name="it_first_rt")
        single = Signal(name="it_single")          # one column tile and one chunk
        # X loaded for every step: chunked and not resident (HwConfig.x_resident; resident,
        # X is loaded a chunk a step at the first column tile and kept for the others)
        x_each = Signal(name="it_x_each")
        m.d.sync += [single.eq(lp.ct_one & lp.ch_one), x_each.eq(~lp.ch_one & ~lp.xres)]
        # ``x_new = x_each | first_ct`` and ``w_new = ~single | first_rt`` are registers,
        # updated with the flags they follow (the compute issue's SETUP tests them).
        x_new = Signal(name="it_x_new")
        w_new = Signal(name="it_w_new")
        pen = Signal(name="it_pen")                # this row tile is the first balanced one
        cpen = Signal(name="it_cpen")              # this chunk is the first balanced one

        with m.If(self.restart):
            m.d.sync += [self.rt.eq(0), self.ct.eq(0), self.ch.eq(0),
                         self.r0.eq(0), self.c0.eq(0), self.p0.eq(0),
                         self.row_off.eq(0), self.col_off.eq(0), self.p_off.eq(0),
                         first_rt.eq(1), self.first_ct.eq(1), self.first_ch.eq(1),
                         self.last_rt.eq(lp.rt_one), self.last_ct.eq(lp.ct_one),
                         self.last_ch.eq(lp.ch_one), x_new.eq(1), w_new.eq(1),
                         pen.eq(lp.rpen0), cpen.eq(lp.cpen0)]
        with m.Elif(self.advance):
            with m.If(~self.last_ch):
                m.d.sync += [self.ch.eq(self.ch + 1), self.p0.eq(self.p0 + Mux(cpen, cmh, cm)),
                             self.p_off.eq(self.p_off + Mux(cpen, p_step_h, p_step)),
                             self.first_ch.eq(0), self.last_ch.eq(self.ch == n_ch_m2),
                             cpen.eq(lp.cbal & (self.ch == n_ch_m3))]
            with m.Else():
                m.d.sync += [self.ch.eq(0), self.p0.eq(0), self.p_off.eq(0),
                             self.first_ch.eq(1), self.last_ch.eq(lp.ch_one),
                             cpen.eq(lp.cpen0)]
                with m.If(~self.last_ct):
                    m.d.sync += [self.ct.eq(self.ct + 1), self.c0.eq(self.c0 + f),
                                 self.col_off.eq(self.col_off + stride_f),
                                 self.first_ct.eq(0), self.last_ct.eq(self.ct == n_ct_m2),
                                 x_new.eq(x_each)]
                with m.Else():
                    m.d.sync += [self.ct.eq(0), self.c0.eq(0), self.col_off.eq(0),
                                 self.first_ct.eq(1), self.last_ct.eq(lp.ct_one),
                                 self.rt.eq(self.rt + 1),
                                 self.r0.eq(self.r0 + Mux(pen, trows_h, trows)),
                                 self.row_off.eq(self.row_off + Mux(pen, stride_rh, stride_r)),
                                 pen.eq(lp.rbal & (self.rt == n_rt_m3)),
                                 first_rt.eq(0), self.last_rt.eq(self.rt == n_rt_m2),
                                 x_new.eq(1), w_new.eq(~single)]

        # the next row tile (``nx_*``; what ``last_rt`` and ``pen`` become at the advance)
        nx_last = reg("nx_last", 1, self.rt == n_rt_m2)
        nx_pen = reg("nx_pen", 1, lp.rbal & (self.rt == n_rt_m3))
        m.d.sync += [self.nx_rows_m1.eq(Mux(nx_last, lp.rm, Mux(nx_pen, trm1_h, lp.trm1))),
                     self.nx_row_off.eq(self.row_off + Mux(pen, stride_rh, stride_r))]
        # floor(log2(n_ct - 1)): the highest set bit of n_ct - 1 (one-hot, then encoded;
        # shallow; 0 for n_ct - 1 = 0)
        top = [n_ct_m1[b] & (n_ct_m1[b + 1:] == 0) for b in range(dim)]
        m.d.sync += self.lnct.eq(Cat(*(Cat(*(top[b] for b in range(dim) if b >> i & 1)).any()
                                       for i in range(len(self.lnct)))))

        lr, lc, lh = self.last_rt, self.last_ct, self.last_ch
        m.d.comb += [
            self.rows.eq(Mux(lr, rows_last, Mux(pen, trows_h, trows))),
            self.ncols.eq(Mux(lc, ncols_last, f)),
            self.len.eq(Mux(lh, len_last, Mux(cpen, cmh, cm))),
            self.n_s.eq(Mux(lh, nsl, Mux(cpen, nsh, nsf))),
            self.n_g.eq(Mux(lr, ngl_m1, Mux(pen, ngh_m1, ngf_m1)) + 1),
            self.rows_m1.eq(Mux(lr, lp.rm, Mux(pen, trm1_h, lp.trm1))),
            self.ncols_m1.eq(Mux(lc, lp.cmod, lp.fmask)),
            self.ns_one.eq(Mux(lh, nsl_one, Mux(cpen, nsh_one, nsf_one))),
            self.ns_m2.eq(Mux(lh, nsl_m2, Mux(cpen, nsh_m2, nsf_m2))),
            self.ns_tp.eq(Mux(lh, nsl_tp, Mux(cpen, nsh_tp, nsf_tp))),
            self.ng_one.eq(Mux(lr, ngl_m1 == 0, Mux(pen, ngh_m1 == 0, ngf_m1 == 0))),
            self.ng_m2.eq(Mux(lr, ngl_m2, Mux(pen, ngh_m2, ngf_m2))),
            self.nr_last.eq(Mux(lr, nrl, Mux(pen, nrh, nrf))),
            self.nb_m1.eq(Mux(lh, nbl_m1, Mux(cpen, nbh_m1, nbf_m1))),
            self.nv_last.eq(Mux(lh, nvl, E)),
            self.step_s.eq(lp.s),
            self.first_rt.eq(first_rt),
            self.last_step.eq(lr & lc & lh),
            self.x_new.eq(x_new),
            self.w_new.eq(w_new),
            # X's last use: every step's own (x_each), else the row tile's last column
            # tile's (its last chunk's, when resident)
            self.x_last_use.eq(x_each | (lc & lh)),
            self.w_last_use.eq(~single | lr),
        ]
        return m
