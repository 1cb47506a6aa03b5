"""The whole board SoC simulated (sim/cosim/soc.py): the board build's LiteX SoC class with
LiteDRAM's SDRAM model for the board's module, exported by LiteX and run under Verilator,
driven by the host code of ``fluidnpu board run`` (UartBone commands into UARTBone's
Stream2Wishbone bridge, the SDRAM's initialisation through the DFI injector, the
memory check, run_on_transport with the fluid scheduler). One Verilator build per
configuration (cached, about 80 s with one compiler job), then a short trace."""
from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("litex_boards")

from fluidnpu.sim.cosim.run import COSIM_CONFIG  # noqa: E402

CFG = dataclasses.replace(COSIM_CONFIG, clock_mhz=40.0)


def test_sim_soc_is_the_board_soc_with_the_sdram_model():
    """No simulator: the simulated SoC's Verilog has the board's parts (LiteDRAM controller,
    L2 cache, UARTBone bridge, the NPU), the SDRAM model in place of the SDR PHY, the
    board's address map and the DFI CSRs the host replays the init sequence through, and
    no memory file to find at run time."""
    from fluidnpu.sim.cosim.soc import soc_verilog
    from fluidnpu.synth.litex_soc import MAIN_RAM_BASE, NPU_CSR_BASE, SIM_TOP
    text, info = soc_verilog(CFG, link="stream")
    assert f"module {SIM_TOP}" in text and "fluidnpu_npu_wb " in text and "module fluidnpu_npu_wb" in text
    assert "$readmemh" not in text
    # the SDRAM model: 4 banks of 8192 rows x 512 columns x 16 bits (the MT48LC16M16)
    assert text.count("reg [15:0] mem") >= 4 and "[0:4194303]" in text
    assert "serial_sink_valid" in text and "serial_source_data" in text
    assert info["npu_csr_base"] == NPU_CSR_BASE and info["main_ram_base"] == MAIN_RAM_BASE
    assert info["sdram_module"] == "MT48LC16M16" and info["sys_clk_mhz"] == 40.0
    assert {"sdram_dfii_control", "sdram_dfii_pi0_command"} <= set(info["csr"])
    assert [c for c, *_ in info["sdram_init"]][:2] == ["Bring CKE high", "Precharge All"]


def test_sim_soc_refuses_bad_links_and_rates():
    from fluidnpu.synth.litex_soc import make_soc
    with pytest.raises(ValueError, match="sim = 'pcie'"):
        make_soc(CFG, "/nonexistent.v", sim="pcie")
    with pytest.raises(ValueError, match=r"baud = 6000000: must be from 9600 to 5000000"):
        make_soc(CFG, "/nonexistent.v", sim="uart", baud=6_000_000)
    with pytest.raises(ValueError, match=r"baud = 5000000: must be from 9600 to 3000000"):
        make_soc(CFG, "/nonexistent.v", baud=5_000_000)


@pytest.mark.rtl
@pytest.mark.slow
def test_host_serves_digits_on_the_simulated_soc():
    """Three requests of the digits scenario: loaded into the simulated SDRAM over the
    bridge, served by the fluid scheduler through the NPU's CSRs, every exit the
    reference's and every request's logits read back bit-exact from the SDRAM. The layers
    pay the SDRAM: each takes several times what the tests' memory gives, and within a
    factor of the cycle model with the board's SDRAM timing (docs/board.md has the
    measured ratios, 0.8 to 1.6: the model leaves out the cache and the one-master bus)."""
    from fluidnpu.hw.runner import MemTiming
    from fluidnpu.sim.cosim.run import prepare
    from fluidnpu.sim.cosim.soc import run_soc_sim
    from fluidnpu.sim.cosim.timing import FbeTiming
    from fluidnpu.sim.memory import memory_timing
    s = prepare(None, "fluid", cfg=CFG, requests=3, seed=1, mem=memory_timing("ulx3s-sdram"))
    rec = run_soc_sim(s, link="stream")
    n = len(s.requests)
    assert rec.engine == "soc-sim:stream"
    assert rec.extra["logits_ok"] == n
    assert rec.result.exit.tolist() == s.exits.tolist()
    assert (rec.finish_cycle > s.arrival_cycle).all()
    assert sum(e[4] for e in rec.events if e[1] == "accept") == n       # every request admitted once
    # the image went over the bridge and the SDRAM came up before it
    assert rec.extra["uart_bytes_out"] > len(s.mem_image)
    assert 0 < rec.extra["sim_cycles"]["sdram_up"] < rec.extra["sim_cycles"]["checked"]
    fast = FbeTiming(s.prog, s.policies, MemTiming()).compute
    layers = _layer_cycles(rec.events)
    assert len(layers) >= 4
    for (layer, b), cyc in layers:
        board = 1 + int(s.timing.compute[b, layer])
        assert cyc > 2 * (1 + int(fast[b, layer])), f"layer {layer} at B={b}: {cyc} cycles, no SDRAM cost"
        assert 0.5 * board <= cyc <= 2.5 * board, f"layer {layer} at B={b}: {cyc} cycles, the model says {board}"


def _layer_cycles(events):
    """(layer, batch) -> cycles from layer_start to the next event of the same layer's end."""
    out, start = [], None
    for c, kind, layer, _ctx, count in events:
        if kind == "layer_start":
            start = (c, layer, count)
        elif kind == "layer_done" and start is not None and start[1] == layer:
            out.append(((layer, start[2]), c - start[0]))
            start = None
    return out
