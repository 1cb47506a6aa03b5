"""The PE array: multipliers, segmented adder trees, accumulators.

Every cycle the array takes one operand pair per lane (``tc`` PEs of ``tp`` lanes) and,
for the run-time split ``B_P``, produces ``B_P`` partial dot products per PE (``B_P``
segments per adder tree). Partial sums accumulate over the cycles of a group (``first`` ..
``last``); on ``last`` the group's sums leave the array, segment ``i`` of PE ``pe`` at index
``i*tc + pe``. Stacking ``k`` PEs into a unit adds their sums: the row stage does that a
row at a time as it writes the group out (:class:`~.stack_tree.StackTree`; until 6 Dec 2026
a stacking tree here added the PEs' sums every cycle, in front of the accumulators).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .dsp import Multiplier
from .gated_add import GatedAdder
from .interface import log2, register_copies

__all__ = ["PEArray"]


class PEArray(wiring.Component):
    """Pipelined PE array; see the module docstring.

    ``x``/``w`` are indexed ``pe*tp + lane``. ``lbp`` (log2 B_P) must be stable while a
    layer runs, from the cycle before its first ``valid`` until its last group's
    ``out_valid``. ``tag`` travels with ``valid`` and comes out with ``out_vals``
    (registers). Only ``out_vals[i*tc + pe]`` with ``i < B_P`` are defined, and only while
    ``out_valid`` is high (they are the accumulators).
    """

    def __init__(self, cfg: HwConfig, *, tag_width: int = 1, valid_copies: int = 1):
        self._MustUse__silence = True       # a refused array is not an unused elaboratable
        if not isinstance(tag_width, int) or tag_width < 1:
            raise ValueError(f"tag_width = {tag_width!r}: must be a positive integer")
        if not isinstance(valid_copies, int) or isinstance(valid_copies, bool) or valid_copies < 1:
            raise ValueError(f"valid_copies = {valid_copies!r}: must be a positive integer")
        self._MustUse__silence = False
        self.cfg = cfg
        self.tag_width = tag_width
        n = cfg.lanes
        op = data.ArrayLayout(signed(cfg.data_width), n)
        super().__init__({
            "lbp": In(range(log2(cfg.tp) + 1)),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "tag": In(tag_width),
            "x": In(op),
            "w": In(op),
            "out_valid": Out(1),
            # copies of ``out_valid`` from registers of their own (each enables a part of
            # a wide consumer, e.g. a column of the row stage's shadow register)
            "out_valid_rep": Out(valid_copies),
            "out_tag": Out(tag_width),
            "out_vals": Out(data.ArrayLayout(signed(cfg.acc_width), n)),
        })

    @staticmethod
    def latency_for(cfg: HwConfig) -> int:
        """Cycles from an operand pair at the inputs to its group's sums at the outputs."""
        # multiply (operand and product registers, inside the DSP block on ECP5), the
        # product in the fabric, adder tree (one stage per level), accumulate
        return 4 + PEArray.tree_stages_for(cfg)

    @property
    def latency(self) -> int:
        return self.latency_for(self.cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg

        # Control tags travel beside the data, one register per stage.
        ctl_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "tag": self.tag_width})
        stages = []

        def ctl_stage(prev, name):
            nxt = Signal(ctl_layout, name=name)
            m.d.sync += nxt.eq(prev)
            stages.append(nxt)
            return nxt

        ctl = Signal(ctl_layout, name="s0_ctl")
        m.d.comb += [ctl.valid.eq(self.valid), ctl.first.eq(self.first),
                     ctl.last.eq(self.last), ctl.tag.eq(self.tag)]
        stages.append(ctl)

        prod = self._multiply(m)
        for st in (1, 2, 3):
            ctl = ctl_stage(ctl, f"s{st}_ctl")
        seg = self._segments(m, prod)
        nseg = self.tree_stages_for(cfg)
        for st in range(4, 4 + nseg):
            ctl = ctl_stage(ctl, f"s{st}_ctl")
        self._accumulate(m, seg, stages[-3])

        m.d.sync += [self.out_valid.eq(ctl.valid & ctl.last), self.out_tag.eq(ctl.tag)]
        register_copies(m, self.out_valid_rep, ctl.valid & ctl.last, name="out_valid_rep")
        return m

    # The policy and the accumulate stage's controls drive a multiplexer or an adder in
    # every lane: one register copy per PE and lane (``_rep``, kept apart by the synthesis
    # flow) keeps each of those nets to the ~20 LUTs of one sum. (One copy per PE drove
    # ~300 LUTs spread over a PE's adders: on the 8 x 8 the segment select and stacking
    # endpoints were the largest groups of late paths after the pre-adders.) The policy
    # reaches them through a copy tree, one copy per PE (position), then one per lane, so
    # the input drives ``tc`` registers, not one per lane across the array: the copies lag
    # ``lbp`` by two cycles, and the first use is at stage 4.

    def _policy_copies(self, m, value, name: str, n: int, lane_name):
        """``n`` x ``tp`` registers holding ``value`` two cycles late: ``n`` first-level
        copies (``s0_<name>_rep<j>``), each copied once per lane (``lane_name(j, i)``)."""
        first = [Signal.like(value, name=f"s0_{name}_rep{j}") for j in range(n)]
        m.d.sync += [r.eq(value) for r in first]
        lanes = [[Signal.like(value, name=lane_name(j, i)) for i in range(self.cfg.tp)]
                 for j in range(n)]
        m.d.sync += [r.eq(first[j]) for j in range(n) for r in lanes[j]]
        return lanes

    def _multiply(self, m):
        """Stages 1-3: the operands registered once more with no logic behind them and the
        product registered (on ECP5 both inside the DSP block, see :class:`~.dsp.Multiplier`),
        then the product in a fabric register (``s3_prod``): the DSP blocks sit in fixed
        rows, and the wire from a block to the adders beside the other blocks of its PE has
        a cycle of its own. (Until the morning of 5 Dec 2026 the first adder level and the
        segment select followed the block's output register directly: on the 8 x 8 the largest group of
        late endpoints, 80 at up to 12.74 ns, most of it wire out of the DSP row.)"""
        cfg = self.cfg
        dw = cfg.data_width
        prod = [[None] * cfg.tp for _ in range(cfg.tc)]
        for pe in range(cfg.tc):
            for l in range(cfg.tp):
                mul = Multiplier(a_width=dw, b_width=dw)
                m.submodules[f"mul_{pe}_{l}"] = mul
                m.d.comb += [mul.a.eq(self.x[pe * cfg.tp + l]), mul.b.eq(self.w[pe * cfg.tp + l])]
                p = Signal(signed(2 * dw), name=f"s3_prod_{pe}_{l}")
                m.d.sync += p.eq(mul.p)
                prod[pe][l] = p
        return prod

    @staticmethod
    def _gated_add(m, name: str, width: int, own, other, keep):
        """``keep ? own : own + other`` (``width`` bits, signed): the select inside the carry
        chain (:class:`~.gated_add.GatedAdder`), where a multiplexer behind the adder took a
        LUT per bit. Only where the kept value is one of the addends: the accumulators
        (``first ? v : v + acc``) and index 0 of every tree level."""
        add = GatedAdder(width=width)
        m.submodules[name] = add
        m.d.comb += [add.a.eq(other), add.b.eq(own), add.gate.eq(keep)]
        return add.y.as_signed()

    @staticmethod
    def tree_stages_for(cfg: HwConfig) -> int:
        """Stages of the segmented adder tree: one per level."""
        return log2(cfg.tp)

    def _segments(self, m, prod):
        """Segmented adder tree, one level per stage (stages 4 ..): B_P = 2**lbp segments
        live at level ``L = ltp - lbp``. At level ``lvl`` index ``i`` takes the sum of
        indices ``2i`` and ``2i + 1`` of the stage before while ``L >= lvl`` (0 past
        ``tp >> lvl``), else keeps its own value: after the last level index ``i < B_P``
        holds segment ``i`` and every other index 0.
        (Until 5 Dec 2026 the second stage added levels 2 and 3 of the 8-lane tree in one
        cycle: two carry chains in a row, the 8 x 8's worst path on every routed seed.)"""
        cfg = self.cfg
        tc, tp, dw = cfg.tc, cfg.tp, cfg.data_width
        ltp = log2(tp)
        lbp_rep = self._policy_copies(m, self.lbp, "lbp", tc, lambda pe, i: f"s1_lbp_rep{pe}_{i}")
        n = self.tree_stages_for(cfg)
        cur = prod
        for lvl in range(1, n + 1):
            st = 3 + lvl
            name = "pre" if lvl == 1 else "seg" if lvl == n else "tree"
            width = 2 * dw + lvl
            nxt = [[Signal(signed(width), name=f"s{st}_{name}_{pe}_{i}") for i in range(tp)]
                   for pe in range(tc)]
            for pe in range(tc):
                for i in range(tp):
                    # the segments' level is below lvl: keep; else add (or 0)
                    done = lbp_rep[pe][i] > ltp - lvl
                    if i == 0:
                        # index 0 keeps its own value or adds index 1's: a gated adder
                        m.d.sync += nxt[pe][i].eq(self._gated_add(
                            m, f"s{st}_add_{pe}", width, cur[pe][0], cur[pe][1], done))
                        continue
                    add = cur[pe][2 * i] + cur[pe][2 * i + 1] if i < tp >> lvl else 0
                    m.d.sync += nxt[pe][i].eq(Mux(done, cur[pe][i], add))
            cur = nxt
        return cur

    def _accumulate(self, m, cur, ctl):
        """Accumulate over the cycles of a group, each PE's segment sums on their own (the
        row stage adds those of stacked PEs); the accumulators are the outputs, segment
        ``i`` of PE ``u`` at index ``i*tc + u``: on ``out_valid``
        they hold the group's sums, as the last cycle's valid updated them. (Until 5 Dec
        2026 a second register per lane, updated every cycle, held the same sum: 2,048
        flip-flops and a second fan-out of every adder on the 8 x 8.) ``ctl`` is the control
        stage before the one beside ``cur``; its first and valid flags are copied once per
        position (``s<st-1>_*_rep<u>``, the stage beside ``cur``) and then once per lane of
        the position: from one register straight to the 64 lane copies, spread over the
        device's four block-RAM rows, the wire to the farthest was the 8 x 8's worst path
        on 5 Dec 2026, evening (9.46 and 11.13 ns, 100.14 and 85.82 MHz). The restart on
        ``first`` is inside each accumulator's carry chain (:class:`~.gated_add.GatedAdder`):
        as a multiplexer behind the adder it was one LUT per accumulator bit, 4,096 on the
        16 x 8."""
        cfg = self.cfg
        tc, tp = cfg.tc, cfg.tp
        st = self.latency - 1
        for u in range(tc):
            first_u = Signal(name=f"s{st - 1}_first_rep{u}")
            valid_u = Signal(name=f"s{st - 1}_valid_rep{u}")
            m.d.sync += [first_u.eq(ctl.first), valid_u.eq(ctl.valid)]
            for i in range(tp):
                first = Signal(name=f"s{st}_first_rep{u}_{i}")
                valid = Signal(name=f"s{st}_valid_rep{u}_{i}")
                m.d.sync += [first.eq(first_u), valid.eq(valid_u)]
                a = Signal(signed(cfg.acc_width), name=f"acc_{u}_{i}")
                # first ? v : v + a, the select inside the carry chain
                acc = self._gated_add(m, f"acc_add_{u}_{i}", cfg.acc_width, cur[u][i], a, first)
                with m.If(valid):
                    m.d.sync += a.eq(acc)
                m.d.comb += self.out_vals[i * tc + u].eq(a)
