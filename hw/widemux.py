"""A four- or eight-way multiplexer: ``o = i[sel]``, built from the ECP5 slice's own muxes.

An ECP5 slice holds two LUT4s and a ``PFUMX`` that selects between them; an ``L6MUX21``
selects between two slices' ``PFUMX`` outputs. An eight-way select is then four LUT4s (each
a two-way select on ``sel[0]``), two ``PFUMX`` (``sel[1]``) and one ``L6MUX21`` (``sel[2]``)
per bit, in two neighbouring slices. yosys 0.23 with ABC mapped the operand buffers'
eight-way write selects to 6.6 LUT4s per bit on average (6,756 LUT4s for the 16 x 8's
1,024 of them). On an ECP5 platform (``platform.family == "ecp5"``) this component
instantiates the cells; elsewhere (simulation, other devices) it is the plain select.
"""
from __future__ import annotations

from amaranth.hdl import Const, Instance, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WideMux", "LUT_MUX2_INIT"]

#: LUT4 init for ``C ? B : A`` (D unused)
LUT_MUX2_INIT = 0xCACA


class WideMux(wiring.Component):
    """``o = i[sel]`` for ``n`` (2, 4 or 8) inputs of ``width`` bits (combinational)."""

    def __init__(self, *, n: int, width: int):
        self._MustUse__silence = True       # a refused one is not an unused elaboratable
        if n not in (2, 4, 8):
            raise ValueError(f"WideMux: n = {n!r}: must be 2, 4 or 8")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"WideMux: width = {width!r}: must be a positive integer")
        self._MustUse__silence = False
        self.n, self.width = n, width
        super().__init__({
            "sel": In(range(n)),
            "i": In(data.ArrayLayout(unsigned(width), n)),
            "o": Out(unsigned(width)),
        })

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "family", None) == "ecp5" and self.n > 2:
            for b in range(self.width):
                m.d.comb += self.o[b].eq(self._ecp5_bit(m, b))
        else:
            m.d.comb += self.o.eq(self.i[self.sel])
        return m

    def _ecp5_bit(self, m, b: int):
        zero = Const(0, 1)
        luts = []
        for k in range(self.n // 2):
            z = Signal(name=f"lut{b}_{k}")
            m.submodules[f"lut{b}_{k}"] = Instance(
                "LUT4", p_INIT=Const(LUT_MUX2_INIT, 16),
                i_A=self.i[2 * k][b], i_B=self.i[2 * k + 1][b], i_C=self.sel[0], i_D=zero,
                o_Z=z)
            luts.append(z)
        f5 = []
        for j in range(self.n // 4):
            z = Signal(name=f"f5_{b}_{j}")
            m.submodules[f"pfumx{b}_{j}"] = Instance(
                "PFUMX", i_ALUT=luts[2 * j + 1], i_BLUT=luts[2 * j], i_C0=self.sel[1], o_Z=z)
            f5.append(z)
        if self.n == 4:
            return f5[0]
        z = Signal(name=f"f6_{b}")
        m.submodules[f"l6mux{b}"] = Instance(
            "L6MUX21", i_D0=f5[0], i_D1=f5[1], i_SD=self.sel[2], o_Z=z)
        return z
