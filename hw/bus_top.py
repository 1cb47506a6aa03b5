"""The generated NPU with standard interfaces: a Wishbone master for its memory port and
a Wishbone CSR slave for commands (``fluidnpu generate --bus wishbone``).

:class:`WishboneCore` wraps the GEMM core (module ``fluidnpu_core_wb``),
:class:`WishboneNPU` the NPU with its FBE (``fluidnpu_npu_wb``). Both have the ports
``bus`` (memory master, :class:`~.bus_wishbone.WishboneMaster`) and ``csr`` (slave,
:class:`~.csr.CsrBank`) and nothing else but clock and reset; the registers are in
:mod:`.regmap` (docs/registers.md), the bus behaviour in docs/bus.md.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, flipped

from .bus_wishbone import WishboneMaster, wishbone_signature
from .config import HwConfig
from .csr import CsrBank
from .interface import log2
from .regmap import CSR_ADDR_WIDTH, Window, regmap

__all__ = ["WishboneCore", "WishboneNPU", "BUS_TOPS"]


def _signature(cfg: HwConfig) -> dict:
    return {"bus": Out(wishbone_signature(cfg.addr_width - log2(cfg.mem_bytes), 8 * cfg.mem_bytes)),
            "csr": In(wishbone_signature(CSR_ADDR_WIDTH, 32))}


def _window_value(bank: CsrBank, win: Window):
    """The packed structure held in a push/live window's registers."""
    parts = sorted(win.parts, key=lambda p: p.bit)
    name = {r.offset: r.name for r in bank.regmap.registers}
    return Cat(*(bank.rw[name[p.reg]][p.lsb:p.lsb + p.width] for p in parts))


def _show(m: Module, bank: CsrBank, win: Window, value) -> None:
    """Drive a view/pop window's ro registers from the packed structure ``value``."""
    name = {r.offset: r.name for r in bank.regmap.registers}
    words: dict[int, list] = {}
    for p in win.parts:
        words.setdefault(p.reg, []).append(p)
    for reg, parts in words.items():
        bits, at = [], 0
        for p in sorted(parts, key=lambda p: p.lsb):
            if p.lsb > at:
                bits.append(Const(0, p.lsb - at))
            bits.append(value.as_value()[p.bit:p.bit + p.width] if hasattr(value, "as_value")
                        else value[p.bit:p.bit + p.width])
            at = p.lsb + p.width
        m.d.comb += bank.ro[name[reg]].eq(Cat(*bits))


class _Common:
    """What both tops share: the sticky errors, the PUSH/POP plumbing."""

    def _errors(self, m, bank, wbm):
        self.overrun = Signal(name="csr_overrun")
        bus_err = Signal(name="csr_bus_err")
        clr = bank.wdata["ERROR_CLEAR"]
        with m.If(bank.strobe["ERROR_CLEAR"] & clr[0]):
            m.d.sync += bus_err.eq(0)
        with m.If(wbm.err):
            m.d.sync += bus_err.eq(1)
        with m.If(bank.strobe["ERROR_CLEAR"] & clr[1]):
            m.d.sync += self.overrun.eq(0)
        self._overrun_sets = []
        m.d.comb += bank.ro["ERROR"].eq(Cat(bus_err, self.overrun))

    def _finish_errors(self, m):
        with m.If(Cat(*self._overrun_sets).any()):
            m.d.sync += self.overrun.eq(1)

    def _push(self, m, bank, win: Window, stream):
        """``win``'s PUSH bit makes it a pending write on ``stream`` until taken; returns the
        pending flag."""
        pend = Signal(name=f"csr_{win.name.lower()}_pending")
        req = bank.strobe["PUSH"] & bank.wdata["PUSH"][win.bit]
        with m.If(stream.valid & stream.ready):
            m.d.sync += pend.eq(0)
        with m.If(req & ~pend):
            m.d.sync += pend.eq(1)
        self._overrun_sets.append(req & pend)
        m.d.comb += [stream.valid.eq(pend), stream.payload.eq(_window_value(bank, win))]
        for reg in win.regs:
            m.d.comb += bank.lock[bank.regmap.at(reg).name].eq(pend)
        return pend

    def _pop(self, m, bank, win: Window, stream):
        m.d.comb += stream.ready.eq(bank.strobe["POP"] & bank.wdata["POP"][win.bit])
        _show(m, bank, win, stream.payload)

    def _constants(self, m, bank):
        for r in bank.regmap.registers:
            if r.name in ("ID", "VERSION", "HWCFG0", "HWCFG1", "HWCFG2"):
                m.d.comb += bank.ro[r.name].eq(r.reset)


class WishboneCore(_Common, wiring.Component):
    """The GEMM core behind a Wishbone master and a Wishbone CSR slave."""

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        self.regmap = regmap(cfg, "core")
        super().__init__(_signature(cfg))

    def elaborate(self, platform):
        from .core import NPUCore
        m = Module()
        cfg = self.cfg
        m.submodules.core = core = NPUCore(cfg)
        m.submodules.wbm = wbm = WishboneMaster(cfg)
        m.submodules.csr = bank = CsrBank(self.regmap)
        wiring.connect(m, core.mem, wbm.mem)
        wiring.connect(m, wbm.bus, flipped(self.bus))
        wiring.connect(m, flipped(self.csr), bank.bus)
        self._constants(m, bank)
        self._errors(m, bank, wbm)

        pend = self._push(m, bank, self.regmap.window("DESC"), core.cmd)
        gtab = Array(_window_value(bank, self.regmap.window(f"GATHER{i}")) for i in range(cfg.b_max))
        m.d.comb += core.gather.addr.eq(gtab[core.gather.idx])

        cycle = Signal(32, name="csr_cycle")
        m.d.sync += cycle.eq(cycle + 1)
        # LAST_CYCLES: from the cycle the command is taken (a) to the first cycle with busy
        # low (b): b - a, as the cocotb bench of the bare core counts it.
        run = Signal(name="csr_run")
        cnt = Signal(32, name="csr_cnt")
        last = Signal(32, name="csr_last")
        done = Signal(32, name="csr_done")
        with m.If(core.cmd.valid & core.cmd.ready):
            m.d.sync += [run.eq(1), cnt.eq(1)]
        with m.Elif(run & core.busy):
            m.d.sync += cnt.eq(cnt + 1)
        with m.Elif(run):
            m.d.sync += [run.eq(0), last.eq(cnt), done.eq(done + 1)]
        m.d.comb += [bank.ro["CYCLE"].eq(cycle), bank.ro["STATUS"].eq(Cat(core.busy, pend)),
                     bank.ro["DONE_COUNT"].eq(done), bank.ro["LAST_CYCLES"].eq(last)]
        self._finish_errors(m)
        return m


class WishboneNPU(_Common, wiring.Component):
    """The NPU with its FBE behind a Wishbone master and a Wishbone CSR slave."""

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        self.regmap = regmap(cfg, "npu")
        super().__init__(_signature(cfg))

    def elaborate(self, platform):
        from .fbe import FluidNPU
        m = Module()
        cfg = self.cfg
        rm = self.regmap
        m.submodules.npu = npu = FluidNPU(cfg)
        m.submodules.wbm = wbm = WishboneMaster(cfg)
        m.submodules.csr = bank = CsrBank(rm)
        wiring.connect(m, npu.mem, wbm.mem)
        wiring.connect(m, wbm.bus, flipped(self.bus))
        wiring.connect(m, flipped(self.csr), bank.bus)
        self._constants(m, bank)
        self._errors(m, bank, wbm)

        pend = [self._push(m, bank, rm.window(n), s) for n, s in
                (("PROG", npu.prog), ("TABLE", npu.table), ("ADMIT", npu.admit), ("PREEMPT", npu.preempt))]
        self._pop(m, bank, rm.window("RESULT"), npu.results)
        self._pop(m, bank, rm.window("EVENT"), npu.events)
        _show(m, bank, rm.window("FBE"), npu.status)
        ctrl = _window_value(bank, rm.window("CTRL"))
        aw = cfg.addr_width
        m.d.comb += [npu.res_addr.eq(ctrl[:aw]), npu.res_shift.eq(ctrl[aw:aw + 6]), npu.step.eq(ctrl[aw + 6])]
        m.d.comb += [bank.ro["CYCLE"].eq(npu.cycle),
                     bank.ro["STATUS"].eq(Cat(*pend, Const(0, 4), npu.results.valid, npu.events.valid))]
        self._finish_errors(m)
        return m


#: ``generate --bus wishbone --top X``: the component and its module name
BUS_TOPS = {"core": (WishboneCore, "fluidnpu_core_wb"), "npu": (WishboneNPU, "fluidnpu_npu_wb")}
