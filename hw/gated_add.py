"""A gated adder: ``y = (gate ? 0 : a) + b``, modulo ``2**width``, in the carry chain.

An accumulator that restarts on the first cycle of a group (``first ? v : acc + v``) is
this adder with ``a = acc``, ``gate = first``. Written as a multiplexer behind an adder,
yosys 0.23 maps it to a carry chain plus one LUT per bit for the multiplexer. On an ECP5
platform (``platform.family == "ecp5"``) this is a chain of ``CCU2C`` cells whose LUTs
compute ``(a & ~gate) ^ b`` themselves: the gate costs no LUT (the PE array's 32-bit
accumulators took 4,096 LUTs for it on the 16 x 8). Elsewhere (simulation, other devices)
it is the same function written out, for the tools to map.

``CCU2C`` per bit (yosys' ``ecp5/cells_sim.v``): the sum is ``LUT4(A, B, C, D) ^ carry``,
the carry out is the carry in where that LUT is 1, else ``LUT2(A, B)`` from ``INIT[3:0]``.
With ``D`` tied to 1 (as yosys' own adder map does) the sum uses ``INIT[15:8]`` and the
generate ``INIT[3:0]`` independently: ``A = a``, ``B = b``, ``C = gate``; the sum's LUT is
``(A & ~C) ^ B`` and the generate is ``B`` (where the two addends are equal, the carry is
either of them).
"""
from __future__ import annotations

from amaranth.hdl import Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["GatedAdder", "CCU2C_INIT"]

#: the CCU2C LUT init for ``(A & ~C) ^ B`` (D = 1) with generate ``B`` (INIT[3:0])
CCU2C_INIT = 0xC6CC


class GatedAdder(wiring.Component):
    """``y = (gate ? 0 : a) + b`` modulo ``2**width`` (combinational); see the module docstring.

    ``a``, ``b`` and ``y`` are ``width``-bit two's complement values (a narrower signed
    operand is passed sign-extended by the assignment to the port).
    """

    def __init__(self, *, width: int):
        self._MustUse__silence = True       # a refused one is not an unused elaboratable
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 64:
            raise ValueError(f"GatedAdder: width = {width!r}: must be an integer from 1 to 64")
        self._MustUse__silence = False
        self.width = width
        super().__init__({
            "a": In(unsigned(width)),
            "b": In(unsigned(width)),
            "gate": In(1),
            "y": Out(unsigned(width)),
        })

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "family", None) == "ecp5":
            self._ecp5(m)
        else:
            m.d.comb += self.y.eq(Mux(self.gate, 0, self.a) + self.b)
        return m

    def _ecp5(self, m):
        w = self.width
        one = Const(1, 1)
        carry = Const(0, 1)
        for c in range(-(-w // 2)):
            bits = [2 * c, 2 * c + 1]
            s = Signal(2, name=f"s{c}")
            cout = Signal(name=f"co{c}")
            ports = {"i_CIN": carry, "o_COUT": cout, "o_S0": s[0], "o_S1": s[1]}
            for h, i in enumerate(bits):
                live = i < w
                ports.update({
                    f"i_A{h}": self.a[i] if live else Const(0, 1),
                    f"i_B{h}": self.b[i] if live else Const(0, 1),
                    f"i_C{h}": self.gate if live else Const(0, 1),
                    f"i_D{h}": one,
                })
            m.submodules[f"ccu{c}"] = Instance(
                "CCU2C", p_INIT0=Const(CCU2C_INIT, 16), p_INIT1=Const(CCU2C_INIT, 16),
                p_INJECT1_0="NO", p_INJECT1_1="NO", **ports)
            for h, i in enumerate(bits):
                if i < w:
                    m.d.comb += self.y[i].eq(s[h])
            carry = cout
