"""A Wishbone CSR slave decoding a :class:`~.regmap.RegMap`: the register file of the
bus-wrapped NPU.

Bus behaviour (documented in docs/bus.md): 32-bit data, word addresses
(``CSR_ADDR_WIDTH`` bits: a 4 KiB region), byte selects honoured on writes. A request is
taken in a cycle with ``CYC & STB`` while no answer is being given; ACK follows in the
next cycle with the read data. STALL is high exactly while ACK is: a pipelined master
gets one access every two cycles, and a classic master (which keeps STB up until it sees
ACK) is never taken twice for one access. Unmapped addresses read 0 and ignore writes;
the slave never answers ERR.

The parent module drives ``ro[name]`` (the value of each ``ro`` register) and
``lock[name]`` (writes to that ``rw`` register ignored while high) and reads ``rw[name]``
(the stored value), ``strobe[name]`` / ``wdata[name]`` (one cycle after a write to a
``wo`` register: high for one cycle, with the written value masked to its fields).
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .bus_wishbone import wishbone_signature
from .regmap import CSR_ADDR_WIDTH, RegMap

__all__ = ["CsrBank"]


class CsrBank(wiring.Component):
    def __init__(self, regmap: RegMap):
        self.regmap = regmap
        super().__init__({"bus": In(wishbone_signature(CSR_ADDR_WIDTH, 32))})
        self.ro, self.rw, self.lock, self.strobe, self.wdata = {}, {}, {}, {}, {}
        for r in regmap.registers:
            n = r.name.lower()
            if r.access == "ro":
                self.ro[r.name] = Signal(32, name=f"csr_ro_{n}")
            elif r.access == "rw":
                self.rw[r.name] = Signal(32, init=r.reset, name=f"csr_rw_{n}")
                self.lock[r.name] = Signal(name=f"csr_lock_{n}")
            else:
                self.strobe[r.name] = Signal(name=f"csr_stb_{n}")
                self.wdata[r.name] = Signal(32, name=f"csr_wd_{n}")

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        ack = Signal(name="csr_ack")
        dat_r = Signal(32, name="csr_dat_r")
        take = bus.cyc & bus.stb & ~ack
        m.d.comb += [bus.ack.eq(ack), bus.stall.eq(ack), bus.err.eq(0), bus.dat_r.eq(dat_r)]
        m.d.sync += ack.eq(take)
        # byte-select mask of the write data
        bmask = Signal(32, name="csr_bmask")
        m.d.comb += bmask.eq(sum(bus.sel[i].replicate(8) << (8 * i) for i in range(4)))
        for s in self.strobe.values():
            m.d.sync += s.eq(0)
        with m.If(take):
            m.d.sync += dat_r.eq(0)
            with m.Switch(bus.adr):
                for r in self.regmap.registers:
                    with m.Case(r.offset >> 2):
                        if r.access == "ro":
                            m.d.sync += dat_r.eq(self.ro[r.name] & r.mask)
                        elif r.access == "rw":
                            m.d.sync += dat_r.eq(self.rw[r.name])
                            store = self.rw[r.name]
                            with m.If(bus.we & ~self.lock[r.name]):
                                new = (store & ~bmask) | (bus.dat_w & bmask)
                                m.d.sync += store.eq(new & r.mask)
                        else:
                            with m.If(bus.we):
                                m.d.sync += [self.strobe[r.name].eq(1),
                                             self.wdata[r.name].eq(bus.dat_w & bmask & r.mask)]
        return m
