"""The NPU inside a LiteX SoC on a ULX3S-85F (docs/board.md): no CPU, the board's SDRAM
through LiteDRAM as main memory, LiteX's UARTBone (UART-to-Wishbone bridge) on the
board's USB serial, and the generated ``fluidnpu_npu_wb`` as a Verilog instance with its
CSR slave as a bus region and its memory master on the SDRAM.

Needs the ``board`` extra (``pip install 'fluidnpu[board]'``: litex, litex-boards,
litedram, migen); :func:`require_litex` says so when it is missing. Import this module's
SoC parts only through :func:`make_soc` (they import migen and LiteX lazily).

The address map (byte addresses on the SoC bus, the ones UARTBone reaches):

* ``NPU_CSR_BASE`` (0x30000000, 4 KiB): the NPU's CSR slave (docs/registers.md offsets);
* ``MAIN_RAM_BASE`` (0x40000000): the SDRAM (32 MiB on the ULX3S's MT48LC16M16);
  the NPU's memory master (through a registered pipelined-to-classic adapter) sees the
  SDRAM from ``MAIN_RAM_BASE + mem_offset``: NPU byte
  address ``a`` is SoC address ``MAIN_RAM_BASE + mem_offset + a``; an NPU access at or
  beyond the SDRAM's end is answered with ERR (``ERROR.BUS`` in the NPU's CSRs);
* LiteX's own CSRs (the SDRAM controller's DFI injector, ``ctrl``) at 0x00000000; their
  addresses are written to ``board.json`` at build time (the host initialises the
  SDRAM through them: no CPU runs LiteX's BIOS).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["BoardExtraMissing", "require_litex", "BoardSpec", "BOARDS", "NPU_CSR_BASE", "NPU_CSR_SIZE",
           "MAIN_RAM_BASE", "SIM_TOP", "SIM_LINKS", "sim_baud_max", "SYS_CLK_RANGE_MHZ", "BAUD_RANGE", "make_soc", "pipelined_to_classic", "npu_verilog", "sdram_init_sequence"]

#: the simulated SoC's top module (``make_soc(..., sim="stream" | "uart")``)
SIM_TOP = "fluidnpu_soc_sim"
#: the simulated SoC's host links (``make_soc(..., sim=...)``)
SIM_LINKS = ("uart", "stream")
NPU_CSR_BASE = 0x3000_0000
NPU_CSR_SIZE = 0x1000
MAIN_RAM_BASE = 0x4000_0000
#: the SoC clocks the CRG's PLL and the SDR SDRAM's timings are used at
SYS_CLK_RANGE_MHZ = (25.0, 100.0)
#: UART rates a UARTBone can be built for (the ULX3S's FT231X reaches 3 Mbaud)
BAUD_RANGE = (9600, 3_000_000)


def sim_baud_max(sys_clk_mhz: float) -> int:
    """The fastest UART the simulated SoC is built for: 8 SoC clocks a bit (LiteX's UART
    samples each bit once, from a phase accumulator; the board's FT231X stops at 3 Mbaud,
    a simulation need not)."""
    return int(sys_clk_mhz * 1e6 / 8)


class BoardExtraMissing(RuntimeError):
    """LiteX (the ``board`` extra) is not installed."""


def require_litex() -> None:
    """Raise :class:`BoardExtraMissing` naming the pip command unless LiteX, LiteX-Boards,
    LiteDRAM and Migen import."""
    missing = []
    for mod, dist in (("migen", "migen"), ("litex", "litex"), ("litedram", "litedram"),
                      ("litex_boards", "litex-boards")):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(dist)
    if missing:
        raise BoardExtraMissing(f"the LiteX SoC needs {', '.join(missing)}, not installed here: "
                                f"pip install 'fluidnpu[board]'")


@dataclass(frozen=True)
class BoardSpec:
    name: str
    device: str                #: the FPGA (LiteX's device string)
    revision: str              #: the board revision LiteX-Boards' platform takes
    sdram_module: str          #: LiteDRAM module class
    sdram_bytes: int           #: the SDRAM's size
    platform: str              #: litex_boards.platforms module


BOARDS = {"ulx3s-85f": BoardSpec("ulx3s-85f", "LFE5U-85F", "2.0", "MT48LC16M16", 32 << 20, "radiona_ulx3s")}


def npu_verilog(cfg, rtlil: bool = False, platform=None) -> str:
    """The Verilog (or RTLIL) of ``fluidnpu_npu_wb`` for the hardware configuration ``cfg``.

    ``platform``: elaborate for it, e.g. the board's amaranth-boards platform, so that the
    operand memories and multipliers are the ECP5's primitives with their registers
    (hw/bram.py, hw/dsp.py) as in ``fluidnpu synth``; ``None`` (simulation) infers them."""
    from amaranth.back import rtlil as rtlil_back, verilog

    from fluidnpu.hw.bus_top import WishboneNPU
    return (rtlil_back if rtlil else verilog).convert(WishboneNPU(cfg), name="fluidnpu_npu_wb",
                                                      platform=platform)


def _npu_ports(cfg):
    from fluidnpu.hw.interface import log2
    return cfg.addr_width - log2(cfg.mem_bytes), 8 * cfg.mem_bytes


def make_soc(cfg, npu_v_path: str, *, board: str = "ulx3s-85f", sys_clk_mhz: float = 40.0,
             baud: int = 1_000_000, mem_offset: int = 0, sim: str | None = None):
    """The SoC (a LiteX ``SoCCore``) with the NPU's Verilog at ``npu_v_path`` as a source.

    ``mem_offset``: byte offset in the SDRAM of the NPU's address 0 (a multiple of 4 KiB).
    ``sim``: the same SoC for simulation (:data:`SIM_TOP`), one of :data:`SIM_LINKS`: a
    LiteX ``SimPlatform`` whose pads are the clock, a reset and the host link, a plain
    clock domain instead of the board's PLL, and LiteDRAM's ``SDRAMPHYModel`` (the board's
    SDRAM module and the board's PHY settings, so the controller's timings in cycles are
    the board's) instead of ``GENSDRPHY`` on the SDRAM pins; everything else (LiteDRAM's
    controller, the L2 cache, the crossbar, UARTBone's Stream2Wishbone bridge, the NPU and
    its adapter) is the board's code. The host link: ``"uart"``, the board's UART PHY on
    two pins ``serial_rx``/``serial_tx`` at ``baud``; ``"stream"``, LiteX's
    ``RS232PHYModel`` instead (the byte streams ``serial_sink_*`` into the bridge and
    ``serial_source_*`` out of it, valid/ready/data, one byte a cycle at most), for
    simulations too short for bit timing (docs/board.md).
    """
    require_litex()
    spec = BOARDS[board]
    lo, hi = SYS_CLK_RANGE_MHZ
    if not lo <= sys_clk_mhz <= hi:
        raise ValueError(f"sys_clk_mhz = {sys_clk_mhz}: must be from {lo:g} to {hi:g}")
    if sim is not None and sim not in SIM_LINKS:
        raise ValueError(f"sim = {sim!r}: must be None or one of {', '.join(SIM_LINKS)}")
    top = sim_baud_max(sys_clk_mhz) if sim else BAUD_RANGE[1]
    if not BAUD_RANGE[0] <= baud <= top:
        raise ValueError(f"baud = {baud}: must be from {BAUD_RANGE[0]} to {top}"
                         + (" (8 SoC clocks per bit at least)" if sim else ""))
    if mem_offset % 4096 or not 0 <= mem_offset < spec.sdram_bytes:
        raise ValueError(f"mem_offset = {mem_offset:#x}: must be a multiple of 0x1000 inside the "
                         f"{spec.sdram_bytes >> 20} MiB SDRAM")
    if 8 * cfg.mem_bytes != 32:
        raise ValueError(f"mem_bytes = {cfg.mem_bytes}: the SoC's bus is 32 bits wide, so the NPU's memory "
                         f"port must be 4 bytes (mem_bytes = 4)")
    return _build_soc_class()(cfg, npu_v_path, spec, sys_clk_mhz * 1e6, baud, mem_offset, sim)


def pipelined_to_classic():
    """The class ``PipelinedToClassic(adr_width, data_width, base_words, window_words)``: a
    Wishbone B4 pipelined master's signals (``adr dat_w dat_r sel cyc stb we ack err
    stall``, word addresses) onto LiteX's classic :class:`wishbone.Interface` ``classic``,
    one access in flight, **registered both ways**: a request is taken into registers
    (``stall`` is the "busy" register, never a function of the bus), the classic cycle
    runs from them with the address moved by ``base_words``, and its answer (ACK or ERR
    with the read data) reaches the master one cycle later from registers. A request at
    or beyond ``window_words`` is answered with ERR in the next cycle and never reaches
    the bus.

    Why registered: docs/bus.md's two-gate adapter (``stall = req & ~ack``) closes a
    combinational path from the NPU's request arbiter through the address adder, LiteX's
    crossbar and the L2 cache's tag check back into the NPU's stall logic; on the ULX3S
    that path (25 ns, 21 logic levels) held the SoC to 40 MHz. Registering costs two
    cycles per access."""
    from litex.soc.interconnect import wishbone
    from migen import If, Module, Signal

    class PipelinedToClassic(Module):
        def __init__(self, adr_width: int, data_width: int, base_words: int, window_words: int):
            self.adr, self.dat_w, self.dat_r = Signal(adr_width), Signal(data_width), Signal(data_width)
            self.sel = Signal(data_width // 8)
            self.cyc, self.stb, self.we, self.ack, self.err, self.stall = (Signal() for _ in range(6))
            self.classic = m = wishbone.Interface(data_width=data_width, address_width=32, addressing="word")
            busy, ack_r, err_r = Signal(), Signal(), Signal()
            r_adr, r_we, r_dat_w, r_sel = Signal(len(m.adr)), Signal(), Signal(data_width), Signal(data_width // 8)
            r_dat_r = Signal(data_width)
            take = Signal()
            self.comb += [
                take.eq(self.cyc & self.stb & ~busy),
                self.stall.eq(busy), self.ack.eq(ack_r), self.err.eq(err_r), self.dat_r.eq(r_dat_r),
                m.cyc.eq(busy), m.stb.eq(busy), m.adr.eq(r_adr), m.we.eq(r_we), m.dat_w.eq(r_dat_w),
                m.sel.eq(r_sel),
            ]
            self.sync += [
                ack_r.eq(0), err_r.eq(0),
                If(busy & (m.ack | m.err),
                   busy.eq(0), ack_r.eq(m.ack), err_r.eq(~m.ack), r_dat_r.eq(m.dat_r)),
                If(take,
                   If(self.adr < window_words,
                      busy.eq(1), r_adr.eq(base_words + self.adr), r_we.eq(self.we), r_dat_w.eq(self.dat_w),
                      r_sel.eq(self.sel),
                   ).Else(err_r.eq(1))),
            ]
    return PipelinedToClassic


def _build_soc_class():
    """The SoC class (defined here so that migen and LiteX are imported only when used)."""
    from litedram import modules as litedram_modules
    from litedram.phy import GENSDRPHY
    from litedram.phy.model import SDRAMPHYModel
    from litex.build.generic_platform import Pins, Subsignal
    from litex.build.sim import SimPlatform
    from litex.soc.integration.soc import SoCRegion
    from litex.soc.integration.soc_core import SoCCore
    from litex.soc.interconnect import wishbone
    from litex_boards.platforms import radiona_ulx3s
    from litex_boards.targets.radiona_ulx3s import _CRG
    from migen import ClockSignal, Instance, Module, ResetSignal, Signal
    from migen.genlib.io import CRG

    PipelinedToClassic = pipelined_to_classic()

    class NpuBridge(Module):
        """The ``fluidnpu_npu_wb`` instance and its glue to LiteX's classic Wishbone:
        ``csr``, a classic slave (the NPU's CSR slave keeps STALL up while it answers, so a
        classic master is taken once per access), and ``master``, the NPU's pipelined
        memory master through :func:`pipelined_to_classic`."""

        def __init__(self, cfg, base_words: int, window_words: int):
            aw, dw = _npu_ports(cfg)
            self.csr = wishbone.Interface(data_width=32, address_width=32, addressing="word")
            self.submodules.adapter = a = PipelinedToClassic(aw, dw, base_words, window_words)
            self.master = a.classic
            self.specials += Instance(
                "fluidnpu_npu_wb",
                i_clk=ClockSignal("sys"), i_rst=ResetSignal("sys"),
                o_bus__adr=a.adr, o_bus__dat_w=a.dat_w, i_bus__dat_r=a.dat_r, o_bus__sel=a.sel,
                o_bus__cyc=a.cyc, o_bus__stb=a.stb, o_bus__we=a.we,
                i_bus__ack=a.ack, i_bus__err=a.err, i_bus__stall=a.stall,
                i_csr__adr=self.csr.adr[:10], i_csr__dat_w=self.csr.dat_w, o_csr__dat_r=self.csr.dat_r,
                i_csr__sel=self.csr.sel, i_csr__cyc=self.csr.cyc, i_csr__stb=self.csr.stb,
                i_csr__we=self.csr.we, o_csr__ack=self.csr.ack, o_csr__err=self.csr.err,
                o_csr__stall=Signal(name="npu_csr_stall"),
            )

    def board_platform(spec):
        return radiona_ulx3s.Platform(device=spec.device, revision=spec.revision, toolchain="trellis")

    class FluidSoC(SoCCore):
        def __init__(self, cfg, npu_v_path, spec, sys_clk_freq, baud, mem_offset, sim=None):
            if sim:
                if sim == "uart":
                    serial = ("serial", 0, Subsignal("tx", Pins(1)), Subsignal("rx", Pins(1)))
                else:
                    serial = ("serial", 0, *(Subsignal(f"{end}_{sig}", Pins(8 if sig == "data" else 1))
                                             for end in ("source", "sink") for sig in ("valid", "ready", "data")))
                platform = SimPlatform("SIM", [("sys_clk", 0, Pins(1)), ("sys_rst", 0, Pins(1)), serial],
                                       name=SIM_TOP)
                self.crg = CRG(platform.request("sys_clk"), platform.request("sys_rst"))
            else:
                platform = board_platform(spec)
                self.crg = _CRG(platform, sys_clk_freq, sdram_rate="1:1")
            SoCCore.__init__(self, platform, sys_clk_freq, cpu_type=None, integrated_rom_size=0,
                             integrated_sram_size=0, with_uart=False, with_timer=False,
                             bus_interconnect="crossbar", ident="fluidnpu on ULX3S", ident_version=False)
            module = getattr(litedram_modules, spec.sdram_module)(sys_clk_freq, "1:1")
            if sim:
                # the board's PHY settings (CL, read latency) taken from a GENSDRPHY made on
                # the board platform's SDRAM pads and thrown away: only its settings are used
                board_phy = GENSDRPHY(board_platform(spec).request("sdram"), sys_clk_freq)
                self.sdrphy = SDRAMPHYModel(module, settings=board_phy.settings, clk_freq=sys_clk_freq)
            else:
                self.sdrphy = GENSDRPHY(platform.request("sdram"), sys_clk_freq)
            self.add_sdram("sdram", phy=self.sdrphy, module=module,
                           origin=MAIN_RAM_BASE, size=spec.sdram_bytes, l2_cache_size=8192)
            if sim == "stream":
                # add_uartbone's three steps with the stream PHY model in place of the UART's
                from litex.soc.cores.uart import RS232PHYModel, UARTBone
                self.add_module(name="uartbone_phy", module=RS232PHYModel(platform.request("serial")))
                self.add_module(name="uartbone", module=UARTBone(phy=self.uartbone_phy, clk_freq=sys_clk_freq,
                                                                 address_width=self.bus.address_width))
                self.bus.add_master(name="uartbone", master=self.uartbone.wishbone)
            else:
                self.add_uartbone(name="uartbone", uart_name="serial", baudrate=baud)
            platform.add_source(npu_v_path)
            self.npu = NpuBridge(cfg, (MAIN_RAM_BASE + mem_offset) // 4, (spec.sdram_bytes - mem_offset) // 4)
            self.bus.add_slave("npu", self.npu.csr,
                               SoCRegion(origin=NPU_CSR_BASE, size=NPU_CSR_SIZE, cached=False))
            self.bus.add_master("npu", self.npu.master)
            self.fluidnpu = {"board": spec.name, "device": spec.device, "sys_clk_mhz": sys_clk_freq / 1e6,
                             "baud": baud, "npu_csr_base": NPU_CSR_BASE, "main_ram_base": MAIN_RAM_BASE,
                             "sdram_bytes": spec.sdram_bytes, "sdram_module": spec.sdram_module,
                             "npu_mem_offset": mem_offset, "npu_mem_bytes": spec.sdram_bytes - mem_offset}

    return FluidSoC


def sdram_init_sequence(soc) -> list[tuple]:
    """The SDRAM's power-up sequence as ``(comment, address, bank, command, delay_us)``
    (LiteDRAM's, which LiteX's BIOS would run): the host replays it through the DFI
    injector's CSRs before it uses the SDRAM."""
    from litedram.init import get_sdram_phy_init_sequence
    seq, _mr = get_sdram_phy_init_sequence(soc.sdram.controller.settings.phy, soc.sdram.controller.settings.timing)
    return [(c, int(a), int(ba), str(cmd), int(d)) for c, a, ba, cmd, d in seq]
