"""The whole board SoC simulated: the LiteX SoC of :mod:`fluidnpu.synth.litex_soc` (the
board build's own class, ``make_soc(..., sim=True)``: UARTBone, LiteX's crossbar,
LiteDRAM's controller and L2 cache with LiteDRAM's SDRAM PHY model for the board's
MT48LC16M16, the NPU behind its registered adapter) exported to Verilog by LiteX and run
under cocotb with Verilator. The host reaches it the way ``fluidnpu board run`` reaches a
ULX3S: :class:`~fluidnpu.board.uartbone.UartBone` commands into UARTBone's
Stream2Wishbone bridge, SDRAM brought up through the DFI injector's CSRs, then
:func:`fluidnpu.board.serve.run_on_transport` (bench :mod:`.soc_tb`; docs/board.md, "The
whole SoC in simulation"). The bytes travel either on the bridge's byte streams
(``link="stream"``, the default: one byte a cycle, what the tests use) or on the UART's
``rx``/``tx`` pins at bit level (``link="uart"``, cocotbext-uart; about 400 SoC cycles a
byte at 1 Mbaud and 40 MHz, many times slower to simulate).

The simulator model is built once per (NPU configuration, SoC clock, baud rate, sources
of hw/ and of the SoC, LiteX versions) and cached like every other design
(:func:`fluidnpu.hw.runner.build_design`); the SoC's address map, LiteX CSR addresses and
SDRAM initialisation sequence travel with it, as a comment line at the top of its Verilog.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
from pathlib import Path

from fluidnpu.hw.runner import SimError

from .run import CosimSetup, RunRecord

__all__ = ["SOC_SIM_CLK_MHZ", "SOC_SIM_BAUD", "build_soc_sim", "soc_sim_info", "run_soc_sim", "soc_verilog"]

#: the board build's defaults (``fluidnpu board build``): the SoC clock and the UART rate
SOC_SIM_CLK_MHZ = 40.0
SOC_SIM_BAUD = 1_000_000
_INFO_TAG = "// fluidnpu-soc-info: "


def soc_verilog(cfg, *, sys_clk_mhz: float = SOC_SIM_CLK_MHZ, baud: int = SOC_SIM_BAUD,
                link: str = "stream") -> tuple[str, dict]:
    """The simulated SoC's Verilog (the SoC and the NPU in one text, memory initial values
    inlined) and its info: ``soc.fluidnpu`` (address map), ``csr`` (LiteX CSRs the host
    uses) and ``sdram_init`` (LiteDRAM's sequence), as ``board.json`` has them."""
    import logging

    from litex.soc.integration.builder import Builder

    from fluidnpu.synth.board_build import _litex_csrs
    from fluidnpu.synth.litex_soc import SIM_TOP, make_soc, npu_verilog, sdram_init_sequence
    old = logging.root.manager.disable
    logging.disable(logging.INFO)           # LiteX prints the whole SoC at INFO
    try:
        with tempfile.TemporaryDirectory(prefix="fluidnpu-socgen-") as tmp:
            root = Path(tmp)
            npu_v = npu_verilog(cfg)
            (root / "npu_wb.v").write_text(npu_v)
            soc = make_soc(cfg, str(root / "npu_wb.v"), sys_clk_mhz=sys_clk_mhz, baud=baud, sim=link)
            builder = Builder(soc, output_dir=str(root / "litex"), compile_software=False, compile_gateware=False,
                              csr_json=str(root / "csr.json"))
            # finalizes the SoC and writes csr.json; the sim toolchain's own step (a
            # LiteX C++ harness) is not wanted: the Verilog is taken below
            builder.build(build_name=SIM_TOP, run=False, build=False)
            frag = soc.get_fragment()
            soc.platform.finalize(frag)
            conv = soc.platform.get_verilog(frag, name=SIM_TOP)
            info = {**soc.fluidnpu, "link": link, "csr": _litex_csrs(root / "csr.json"),
                    "sdram_init": sdram_init_sequence(soc)}
    finally:
        logging.disable(old)
    text = _inline_data_files(conv.main_source, conv.data_files)
    return f"{_INFO_TAG}{json.dumps(info)}\n{text}\n{npu_v}", info


def _inline_data_files(src: str, files: dict) -> str:
    """``$readmemh("<file>", mem);`` -> one assignment per word (the file's lines), so the
    Verilog needs no file beside it at run time (LiteX's identifier ROM is the one here)."""
    import re
    pat = re.compile(r'\$readmemh\("(?P<f>[^"]+)",\s*(?P<m>\w+)\);')

    def sub(mo):
        if mo["f"] not in files:
            raise SimError(f"SoC Verilog reads {mo['f']}, which LiteX did not produce")
        words = [w for w in files[mo["f"]].split() if w]
        return " ".join(f"{mo['m']}[{i}] = 'h{w};" for i, w in enumerate(words))
    return pat.sub(sub, src)


def _soc_sources_hash() -> str:
    from fluidnpu.synth import board_build, litex_soc
    h = hashlib.sha256()
    for mod in (litex_soc, board_build):
        h.update(Path(mod.__file__).read_bytes())
    for dist in ("litex", "litedram", "migen", "litex-boards"):
        h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
    return h.hexdigest()[:16]


def build_soc_sim(cfg, *, sys_clk_mhz: float = SOC_SIM_CLK_MHZ, baud: int = SOC_SIM_BAUD,
                  link: str = "stream") -> Path:
    """Build (or reuse) the Verilator model of the simulated SoC with the host ``link``
    (``"stream"`` or ``"uart"``, :data:`~fluidnpu.synth.litex_soc.SIM_LINKS`); returns its folder."""
    from fluidnpu.hw.runner import _rtl_sources_hash, build_design
    from fluidnpu.synth.litex_soc import SIM_TOP, require_litex
    require_litex()
    if link == "stream":
        baud = SOC_SIM_BAUD         # no UART PHY: the rate is not part of the design
    key = (f"{cfg.key()}|clk={sys_clk_mhz:g}|link={link}|baud={baud}"
           f"|src={_rtl_sources_hash()}|soc={_soc_sources_hash()}")
    # one compiler job: the SoC is built beside other work (CI's 2 cores, synthesis runs)
    return build_design("verilator", SIM_TOP, key, lambda: soc_verilog(cfg, sys_clk_mhz=sys_clk_mhz, baud=baud, link=link)[0],
                        jobs=1)


def soc_sim_info(bdir: Path) -> dict:
    """The info :func:`soc_verilog` stored at the top of a built model's Verilog."""
    from fluidnpu.synth.litex_soc import SIM_TOP
    with open(Path(bdir) / f"{SIM_TOP}.v") as f:
        first = f.readline()
    if not first.startswith(_INFO_TAG):
        raise SimError(f"{bdir}: the SoC model's Verilog lacks its info line")
    return json.loads(first[len(_INFO_TAG):])


def run_soc_sim(s: CosimSetup, *, link: str = "stream", baud: int = SOC_SIM_BAUD, max_cycles: int | None = None,
                run_dir=None) -> RunRecord:
    """Serve ``s``'s trace on the simulated SoC through UARTBone, the host driver and the
    scheduler ``s`` names (what ``fluidnpu board run`` does on a board); the SoC runs at
    ``s.cfg.clock_mhz``; the host ``link`` is ``"stream"`` (the bridge's byte streams) or
    ``"uart"`` (the UART's pins at ``baud``). The record's engine is ``soc-sim:<link>``;
    ``extra`` has the link's byte and command counts and the cycles at which the SDRAM
    was up, the memory checked and the run ended. Raises :class:`SimError` when the bench
    fails."""
    from fluidnpu.synth.litex_soc import SIM_TOP

    from .board import serve_in_cocotb
    from fluidnpu.synth.litex_soc import SIM_LINKS
    if link not in SIM_LINKS:
        raise ValueError(f"link = {link!r}: must be one of {', '.join(SIM_LINKS)}")
    bdir = build_soc_sim(s.cfg, sys_clk_mhz=s.cfg.clock_mhz, baud=baud, link=link)
    info = soc_sim_info(bdir)
    if len(s.mem_image) > info["npu_mem_bytes"]:
        raise ValueError(f"the network and its requests need {len(s.mem_image)} bytes; the NPU sees "
                         f"{info['npu_mem_bytes']} bytes of SDRAM")
    return serve_in_cocotb("verilator", bdir, SIM_TOP, "fluidnpu.sim.cosim.soc_tb", s, run_dir,
                           prefix="fluidnpu-socsim-", what="the simulated SoC",
                           payload={"info": info, "baud": baud, "link": link,
                                    "engine": f"soc-sim:{link}", "max_cycles": max_cycles})
