"""The stackable PE array: multipliers, segmented adder trees, stacking tree, accumulators.

Every cycle the array takes one operand pair per lane (``tc`` PEs of ``tp`` lanes) and,
for the run-time policy ``(B_P, k)``, produces ``B_P x F`` partial dot products
(``F = tc/k`` units of ``k`` stacked PEs, ``B_P`` segments per adder tree). Partial
sums accumulate over the cycles of a group (``first`` .. ``last``); on ``last`` the
group's sums leave the array, compacted so that segment ``i`` of unit ``u`` is at
index ``i*tc + u``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .dsp import Multiplier
from .interface import log2, register_copies

__all__ = ["PEArray"]


class PEArray(wiring.Component):
    """Pipelined PE array; see the module docstring.

    ``x``/``w`` are indexed ``pe*tp + lane``. ``lbp``/``lk`` (log2 of B_P and k) must be
    stable while a layer runs, from the cycle before its first ``valid`` until its last
    group's ``out_valid``. ``tag`` travels with ``valid`` and comes out with ``out_vals``
    (registers). Only ``out_vals[i*tc + u]`` with ``i < B_P`` and ``u < tc/k`` are defined.
    """

    def __init__(self, cfg: HwConfig, *, tag_width: int = 1, valid_copies: int = 1,
                 tag_copies: int = 0, tag_copy_bits: int = 0):
        self._MustUse__silence = True       # a refused array is not an unused elaboratable
        if not isinstance(tag_width, int) or tag_width < 1:
            raise ValueError(f"tag_width = {tag_width!r}: must be a positive integer")
        if not isinstance(valid_copies, int) or isinstance(valid_copies, bool) or valid_copies < 1:
            raise ValueError(f"valid_copies = {valid_copies!r}: must be a positive integer")
        if not isinstance(tag_copies, int) or isinstance(tag_copies, bool) or tag_copies < 0:
            raise ValueError(f"tag_copies = {tag_copies!r}: must be an integer >= 0")
        if (not isinstance(tag_copy_bits, int) or isinstance(tag_copy_bits, bool)
                or not 0 <= tag_copy_bits <= tag_width or (tag_copies and not tag_copy_bits)):
            raise ValueError(f"tag_copy_bits = {tag_copy_bits!r}: must be an integer from "
                             f"{1 if tag_copies else 0} to tag_width = {tag_width}")
        self._MustUse__silence = False
        self.cfg = cfg
        self.tag_width = tag_width
        self.tag_copies, self.tag_copy_bits = tag_copies, tag_copy_bits
        n = cfg.lanes
        op = data.ArrayLayout(signed(cfg.data_width), n)
        super().__init__({
            "lbp": In(range(log2(cfg.tp) + 1)),
            "lk": In(range(log2(cfg.tc) + 1)),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "tag": In(tag_width),
            "x": In(op),
            "w": In(op),
            "out_valid": Out(1),
            # copies of ``out_valid`` from registers of their own (each enables one slice
            # of a wide consumer, e.g. the stage FIFO's)
            "out_valid_rep": Out(valid_copies),
            "out_tag": Out(tag_width),
            # copies of ``out_tag[:tag_copy_bits]`` from registers of their own (each for
            # the slices of a wide consumer that store those bits, e.g. the stage FIFO's)
            "out_tag_rep": Out(data.ArrayLayout(max(tag_copy_bits, 1), tag_copies)),
            "out_vals": Out(data.ArrayLayout(signed(cfg.acc_width), n)),
        })

    @staticmethod
    def latency_for(cfg: HwConfig) -> int:
        """Cycles from an operand pair at the inputs to its group's sums at the outputs."""
        # multiply (operand and product registers), adder tree (two stages, the second
        # with the segment select), one stage per level of the stacking tree, compacting
        # select + accumulate
        return 5 + log2(cfg.tc)

    @property
    def latency(self) -> int:
        return self.latency_for(self.cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        tc, tp = cfg.tc, cfg.tp
        ltp, ltc = log2(tp), log2(tc)
        dw, aw = cfg.data_width, cfg.acc_width

        # Control tags travel beside the data, one register per stage.
        ctl_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "tag": self.tag_width})

        def ctl_stage(prev, name):
            nxt = Signal(ctl_layout, name=name)
            m.d.sync += nxt.eq(prev)
            return nxt

        # The policy and the accumulate stage's controls drive a multiplexer or an adder in
        # every lane: one register copy per PE (``_rep``, kept apart by the synthesis flow)
        # keeps each of those nets local. The policy copies lag ``lbp``/``lk`` by a cycle
        # (so do the stacking levels' copies of ``lk``, below).
        lbp_rep = [Signal.like(self.lbp, name=f"s0_lbp_rep{pe}") for pe in range(tc)]
        m.d.sync += [r.eq(self.lbp) for r in lbp_rep]

        ctl = Signal(ctl_layout, name="s0_ctl")
        m.d.comb += [ctl.valid.eq(self.valid), ctl.first.eq(self.first),
                     ctl.last.eq(self.last), ctl.tag.eq(self.tag)]

        # Stages 1 and 2: multiply, the operands registered once more with no logic behind
        # them and the product registered (on ECP5 both inside the DSP block, see
        # :class:`~.dsp.Multiplier`), so that the wires to and from the block's fixed row
        # have cycles of their own.
        prod = [[None] * tp for _ in range(tc)]
        for pe in range(tc):
            for l in range(tp):
                mul = Multiplier(a_width=dw, b_width=dw)
                m.submodules[f"mul_{pe}_{l}"] = mul
                m.d.comb += [mul.a.eq(self.x[pe * tp + l]), mul.b.eq(self.w[pe * tp + l])]
                prod[pe][l] = mul.p
        ctl = ctl_stage(ctl_stage(ctl, "s1_ctl"), "s2_ctl")

        # Segmented adder tree, over two stages: B_P = 2**lbp segments live at level
        # ltp - lbp. Stage 3 adds the first level and keeps, per index, what the later
        # levels need: the products themselves for B_P = tp, else the first level's sums
        # (0 above them). Stage 4 adds the other levels and selects.
        segw = 2 * dw + ltp
        half = max(tp // 2, 1)
        pre = [[Signal(signed(2 * dw + min(ltp, 1)), name=f"s3_pre_{pe}_{i}") for i in range(tp)]
               for pe in range(tc)]
        for pe in range(tc):
            p_ = prod[pe]
            lvl1 = [p_[2 * n] + p_[2 * n + 1] for n in range(tp // 2)]
            for i in range(tp):
                up = lvl1[i] if i < tp // 2 else 0
                m.d.sync += pre[pe][i].eq(Mux(lbp_rep[pe] == ltp, p_[i], up))
        ctl = ctl_stage(ctl, "s3_ctl")

        seg = [[Signal(signed(segw), name=f"s4_seg_{pe}_{i}") for i in range(tp)] for pe in range(tc)]
        for pe in range(tc):
            levels = {1: pre[pe][:half]}
            for lvl in range(2, ltp + 1):
                prev = levels[lvl - 1]
                levels[lvl] = [prev[2 * n] + prev[2 * n + 1] for n in range(tp >> lvl)]
            for i in range(tp):
                with m.Switch(lbp_rep[pe]):
                    for lbp in range(ltp + 1):
                        with m.Case(lbp):
                            if ltp - lbp <= 1:
                                m.d.sync += seg[pe][i].eq(pre[pe][i])
                            elif i < (1 << lbp):
                                m.d.sync += seg[pe][i].eq(levels[ltp - lbp][i])
                            else:
                                m.d.sync += seg[pe][i].eq(0)
                    with m.Default():
                        m.d.sync += seg[pe][i].eq(0)
        ctl_before, ctl = ctl, ctl_stage(ctl, "s4_ctl")

        # Stacking tree across PEs, one level per stage, compacting as it adds: at level
        # ``lvl`` position ``u < tc >> lvl`` takes the sum of positions ``2u`` and ``2u + 1``
        # while ``lk >= lvl``, else keeps its own value (every other position keeps its
        # own). After the ``ltc`` levels position ``u`` holds unit ``u``'s sums (PEs
        # ``u*k .. u*k + k - 1``) whatever ``lk`` is, so no compacting select follows (until
        # 5 Dec 2026 the tree added in place and a select by ``k`` brought PE ``u*k`` to
        # ``u``: in front of the accumulator, the 8 x 8's largest group of late endpoints;
        # after the output register, a second long wire in the FIFO's write path).
        # The level multiplexers take ``lk`` from a register copy per position.
        cur = seg
        for lvl in range(1, ltc + 1):
            nxt = []
            for u in range(tc):
                row = []
                if u < tc >> lvl:
                    lk_lvl = Signal.like(self.lk, name=f"s{4 + lvl}_lk_rep{u}")
                    m.d.sync += lk_lvl.eq(self.lk)
                for i in range(tp):
                    r = Signal(signed(segw + lvl), name=f"s{4 + lvl}_stack_{u}_{i}")
                    if u < tc >> lvl:
                        m.d.sync += r.eq(Mux(lk_lvl >= lvl, cur[2 * u][i] + cur[2 * u + 1][i],
                                             cur[u][i]))
                    else:
                        m.d.sync += r.eq(cur[u][i])
                    row.append(r)
                nxt.append(row)
            cur = nxt
            ctl_before, ctl = ctl, ctl_stage(ctl, f"s{4 + lvl}_ctl")
        # The accumulate stage's controls, one register copy per position, beside ``cur``.
        first_rep = [Signal(name=f"s{self.latency - 1}_first_rep{u}") for u in range(tc)]
        valid_rep = [Signal(name=f"s{self.latency - 1}_valid_rep{u}") for u in range(tc)]
        m.d.sync += [r.eq(ctl_before.first) for r in first_rep]
        m.d.sync += [r.eq(ctl_before.valid) for r in valid_rep]

        # Accumulate over the cycles of a group, position ``u`` unit ``u``'s sums (a
        # position past the policy's units accumulates sums nobody reads); emit on the
        # group's last cycle, segment ``i`` of unit ``u`` at index ``i*tc + u``.
        for u in range(tc):
            for i in range(tp):
                a = Signal(signed(aw), name=f"acc_{u}_{i}")
                v = cur[u][i]
                with m.If(valid_rep[u]):
                    m.d.sync += a.eq(Mux(first_rep[u], v, a + v))
                m.d.sync += self.out_vals[i * tc + u].eq(Mux(first_rep[u], v, a + v))
        m.d.sync += [self.out_valid.eq(ctl.valid & ctl.last), self.out_tag.eq(ctl.tag)]
        register_copies(m, self.out_valid_rep, ctl.valid & ctl.last, name="out_valid_rep")
        for c in range(self.tag_copies):
            r = Signal(self.tag_copy_bits, name=f"out_tag_rep{c}")
            m.d.sync += r.eq(ctl.tag[:self.tag_copy_bits])
            m.d.comb += self.out_tag_rep[c].eq(r)
        return m
