"""A registered signed multiplier: the device's DSP block with its own registers where known.

``p`` = ``a * b`` two cycles after ``a``/``b`` (input registers, then an output register),
both registers advancing only while ``en`` is high. On an ECP5 platform
(``platform.family == "ecp5"``) this is one ``MULT18X18D`` with its input and output
registers enabled: yosys 0.23 maps ``$mul`` to the block without them, so the fabric
registers around it sit a long wire away from the block's fixed row and each path is
register -> wire -> multiplier -> wire -> register. With the block's registers, the
multiply is register to register inside the block and each wire has a cycle of its own.
The operands sit in the top bits of the block's inputs, the bits below tied to 0.
Elsewhere (simulation, other devices, operands wider than the block's 18 bits) it is the
same two registers around a ``*``, for yosys to map.
"""
from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier"]

#: operand width of the ECP5 ``MULT18X18D`` (signed)
ECP5_WIDTH = 18


class Multiplier(wiring.Component):
    """``p = a * b`` (signed), two cycles later; see the module docstring.

    ``a_width``/``b_width`` are the signed operand widths (an unsigned value is passed one
    bit wider, zero-extended); on ECP5 the block is used when both are at most 18.
    """

    LATENCY = 2

    def __init__(self, *, a_width: int, b_width: int):
        for name, v in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 64:
                raise ValueError(f"Multiplier: {name} = {v!r}: must be an integer from 1 to 64")
        self.a_width, self.b_width = a_width, b_width
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "en": In(1, init=1),
            "p": Out(signed(a_width + b_width)),
        })

    def elaborate(self, platform):
        m = Module()
        if (getattr(platform, "family", None) == "ecp5"
                and max(self.a_width, self.b_width) <= ECP5_WIDTH):
            # The operands sit in the top bits of the block's 18-bit inputs, the low bits
            # tied to 0 (in the bitstream, no wire): a*2**sa times b*2**sb, so the product
            # is the top a_width + b_width bits of P. Sign-extended into the low bits
            # instead, each operand's sign bit drove 18 - width more pins: on the 16 x 8,
            # 20 of the 36 input wires into every block, where router2 found the DSP rows
            # congested.
            sa, sb = ECP5_WIDTH - self.a_width, ECP5_WIDTH - self.b_width
            p36 = Signal(signed(2 * ECP5_WIDTH))
            m.d.comb += self.p.eq(p36[sa + sb:])
            ports = {f"i_A{i}": Const(0, 1) if i < sa else self.a[i - sa]
                     for i in range(ECP5_WIDTH)}
            ports.update({f"i_B{i}": Const(0, 1) if i < sb else self.b[i - sb]
                          for i in range(ECP5_WIDTH)})
            ports.update({f"i_C{i}": Const(0, 1) for i in range(ECP5_WIDTH)})
            ports.update({f"o_P{i}": p36[i] for i in range(2 * ECP5_WIDTH)})
            ports.update(i_CLK0=ClockSignal("sync"), i_CE0=self.en, i_RST0=Const(0, 1))
            m.submodules.mult = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
                p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
                p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
                i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1),
                i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
                **ports)
        else:
            a_r = Signal(signed(self.a_width), name="m1_a")
            b_r = Signal(signed(self.b_width), name="m1_b")
            with m.If(self.en):
                m.d.sync += [a_r.eq(self.a), b_r.eq(self.b), self.p.eq(a_r * b_r)]
        return m
