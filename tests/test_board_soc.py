"""The LiteX SoC of the ULX3S (synth/litex_soc.py) without synthesis: the pipelined-to-classic
adapter of the NPU's memory master under migen's simulator, and the SoC's generation
(Verilog, address map, CSRs, the yosys script the build runs). Needs the ``board`` extra."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("migen")
pytest.importorskip("litex_boards")

from fluidnpu.hw.config import HwConfig  # noqa: E402
from fluidnpu.synth.litex_soc import (MAIN_RAM_BASE, NPU_CSR_BASE, make_soc, npu_verilog,  # noqa: E402
                                      pipelined_to_classic)

SMALL = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, b_max=4, net_entries=4,
                 max_classes=4)


def _adapter_run(requests, base=16, window=32):
    """A pipelined master issuing ``(adr, we, data)`` one at a time: held while STALL, taken
    in the first cycle without STALL, then waiting for its answer. Returns ``(answers, sram
    words, cycles stalled, cycles from take to answer)``; an answer is ``("ack" | "err",
    read data)``."""
    from litex.soc.interconnect import wishbone
    from migen import Module
    from migen.sim import run_simulation

    class Dut(Module):
        def __init__(self):
            self.submodules.a = pipelined_to_classic()(30, 32, base, window)
            self.submodules.sram = wishbone.SRAM(4 * 64, bus=self.a.classic)

    dut = Dut()
    a = dut.a
    answers, mem, stalls, waits = [], [], [0], []

    def bench():
        for adr, we, data in requests:
            yield a.cyc.eq(1)
            yield a.stb.eq(1)
            yield a.adr.eq(adr)
            yield a.we.eq(we)
            yield a.dat_w.eq(data)
            yield a.sel.eq(0xF)
            yield
            while (yield a.stall):
                assert not (yield a.ack) and not (yield a.err)
                stalls[0] += 1
                yield
            yield a.stb.eq(0)                   # taken in this cycle
            n = 0
            while True:
                yield
                n += 1
                if (yield a.ack) or (yield a.err):
                    answers.append(("ack" if (yield a.ack) else "err", (yield a.dat_r)))
                    break
                assert n < 50, "no answer"
            waits.append(n)
            yield a.cyc.eq(0)
        yield
        for i in range(64):
            mem.append((yield dut.sram.mem[i]))

    run_simulation(dut, bench())
    return answers, mem, stalls[0], waits


def test_adapter_moves_addresses_and_answers_outside_with_err():
    reqs = [(0, 1, 0x11111111), (5, 1, 0x55555555), (31, 1, 0x31313131), (32, 1, 0xDEAD), (5, 0, 0), (40, 0, 0)]
    answers, mem, stalls, waits = _adapter_run(reqs, base=16, window=32)
    assert [k for k, _ in answers] == ["ack", "ack", "ack", "err", "ack", "err"]
    assert answers[4][1] == 0x55555555
    assert mem[16] == 0x11111111 and mem[21] == 0x55555555 and mem[47] == 0x31313131
    assert 0xDEAD not in mem                    # the access outside the window never reached the bus
    # registered both ways: SRAM (answers a cycle after its request) + 2; ERR outside: next cycle
    assert waits == [3, 3, 3, 1, 3, 1]


def test_adapter_stalls_a_second_request_while_busy():
    """A master that keeps STB up for its next request while the first is on the bus is
    stalled until the first is answered (one access in flight)."""
    from migen import Module
    from migen.sim import run_simulation
    from litex.soc.interconnect import wishbone

    class Dut(Module):
        def __init__(self):
            self.submodules.a = pipelined_to_classic()(30, 32, 0, 64)
            self.submodules.sram = wishbone.SRAM(4 * 64, bus=self.a.classic)

    dut = Dut()
    a = dut.a
    seen = []

    def bench():
        yield a.cyc.eq(1)
        yield a.stb.eq(1)
        yield a.adr.eq(3)
        yield a.we.eq(1)
        yield a.dat_w.eq(0xABCD)
        yield a.sel.eq(0xF)
        yield
        assert not (yield a.stall)               # the first is taken at once
        yield a.adr.eq(4)                        # the next request follows immediately
        yield a.dat_w.eq(0x1234)
        for _ in range(8):
            yield
            seen.append(((yield a.stall), (yield a.ack)))
        yield a.stb.eq(0)
        yield a.cyc.eq(0)
        for _ in range(6):
            yield
        seen.append(((yield dut.sram.mem[3]), (yield dut.sram.mem[4])))

    run_simulation(dut, bench())
    assert seen[0] == (1, 0)                     # busy with the first: the second is held
    assert (0, 1) in seen[:4]                    # the first answered, the second taken
    assert seen[-1] == (0xABCD, 0x1234)


def test_soc_generates_with_the_npu_on_its_bus(tmp_path):
    """LiteX generates the SoC (no tools run): the NPU instance in the Verilog, its CSR
    region and the SDRAM where docs/board.md says, and the yosys script the build edits."""
    from fluidnpu.synth.board_build import _edit_script, _litex_csrs
    from fluidnpu.synth.board_build import _quiet
    from litex.soc.integration.builder import Builder
    v = tmp_path / "npu_wb.v"
    v.write_text(npu_verilog(SMALL))
    soc = _quiet(lambda: make_soc(SMALL, str(v), sys_clk_mhz=50, baud=1_000_000))
    b = Builder(soc, output_dir=str(tmp_path / "litex"), compile_software=False, compile_gateware=False,
                csr_json=str(tmp_path / "csr.json"))
    _quiet(lambda: b.build(build_name="soc", run=False))
    gw = tmp_path / "litex" / "gateware"
    text = (gw / "soc.v").read_text()
    assert re.search(r"^fluidnpu_npu_wb fluidnpu_npu_wb\(", text, re.M)
    assert re.search(r"\.bus__stall\s*\(", text) and re.search(r"\.csr__ack\s*\(", text)
    mems = json.loads((tmp_path / "csr.json").read_text())["memories"]
    assert mems["npu"] == {"base": NPU_CSR_BASE, "size": 0x1000, "type": "io"}
    assert mems["main_ram"]["base"] == MAIN_RAM_BASE and mems["main_ram"]["size"] == 32 << 20
    csrs = _litex_csrs(tmp_path / "csr.json")
    assert {"sdram_dfii_control", "sdram_dfii_pi0_command_issue", "ctrl_scratch"} <= set(csrs)
    assert soc.fluidnpu["npu_mem_offset"] == 0 and soc.fluidnpu["baud"] == 1_000_000
    ys = gw / "soc.ys"
    _edit_script(ys, v, tmp_path / "npu_wb.il")
    script = ys.read_text()
    assert script.index("setattr -set keep 1") < script.index("synth_ecp5")
    # one synth_ecp5, as LiteX wrote it: no dffunmap (LiteX's system reset on every flip-flop)
    synth = [line for line in script.splitlines() if line.startswith("synth_ecp5")]
    assert len(synth) == 1 and "-top soc" in synth[0] and "-run" not in synth[0]
    assert "dffunmap" not in script
    assert f"read_rtlil {tmp_path / 'npu_wb.il'}" in script and f"read_verilog {v}" not in script
    assert "--85k" in soc.platform.toolchain.pnr_opts


@pytest.mark.parametrize("kw, match", [({"sys_clk_mhz": 150}, "sys_clk_mhz = 150"), ({"baud": 100}, "baud = 100"),
                                       ({"mem_offset": 123}, "mem_offset = 0x7b")])
def test_soc_refuses_bad_options(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        make_soc(SMALL, str(tmp_path / "x.v"), **kw)


def test_build_refuses_an_unknown_router_before_work(tmp_path, monkeypatch):
    from fluidnpu.synth import board_build
    monkeypatch.setattr(board_build, "find_tool", lambda key: pytest.fail("a tool was looked up"))
    with pytest.raises(ValueError, match="router = 'router3': must be one of auto, router1, router2"):
        board_build.build_board(SMALL, tmp_path / "out", router="router3")
    assert not (tmp_path / "out").exists()


def test_build_interrupted_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while a tool runs: the output folder is not created and no staging folder
    is left (the build is staged and published at the end)."""
    from fluidnpu.synth import board_build
    monkeypatch.setattr(board_build, "find_tool", lambda key: [key])
    monkeypatch.setattr(board_build, "tool_version", lambda key: "test")
    ran = []

    def interrupted(key, args, **kw):
        ran.append(key)
        raise KeyboardInterrupt
    monkeypatch.setattr(board_build, "run_tool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        board_build.build_board(SMALL, tmp_path / "out")
    assert ran == ["yosys"]
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("router, expect", [("auto", ("router2", True)), ("router1", ("router1", False))])
def test_build_places_with_the_flows_placer_and_floorplan(tmp_path, monkeypatch, router, expect):
    """The SoC's NPU is elaborated for the board (block RAMs with output registers, as
    ``fluidnpu synth`` builds it), and nextpnr runs with the synthesis flow's static placer
    and router (``auto``: router2) on a netlist whose operand memories are pinned (``BEL`` attributes; the SoC's own memories
    are not). The tools are stand-ins: a fake yosys writes a netlist with the NPU's block-RAM
    names as flatten gives them, and a fake nextpnr records what it was given and fails."""
    from fluidnpu.synth import board_build
    from fluidnpu.synth.tools import ToolFailed
    monkeypatch.setattr(board_build, "find_tool", lambda key: [key])
    monkeypatch.setattr(board_build, "tool_version", lambda key: "test")
    monkeypatch.setattr(board_build, "parse_yosys_stat", lambda text, top: {"by_type": {}})
    seen = {}
    npu = "fluidnpu_npu_wb.npu.core.bufs"
    names = [f"{npu}.{k}mem{g}.bram{i}" for k in "xw" for g in range(4) for i in range(2)] + ["sram.mem0"]

    def tool(key, args, cwd=None, **kw):
        if key == "yosys":
            # the NPU is elaborated for the board: its memories are the ECP5's blocks
            seen["npu_il"] = (cwd.parent.parent / "npu_wb.il").read_text()
            cells = {n: {"type": "DP16KD", "attributes": {}} for n in names}
            (cwd / "soc.json").write_text(json.dumps({"modules": {"soc": {"cells": cells}}}))
            (cwd / "yosys.log").write_text("")
            return 0.0
        seen["args"] = args
        seen["cells"] = json.loads((cwd / "soc.json").read_text())["modules"]["soc"]["cells"]
        raise ToolFailed("nextpnr-ecp5: stopped by the test", cwd / "nextpnr.log")
    monkeypatch.setattr(board_build, "run_tool", tool)
    with pytest.raises(ToolFailed, match="stopped by the test"):
        board_build.build_board(SMALL, tmp_path / "out", router=router)
    assert "DP16KD" in seen["npu_il"] and 'REGMODE_B' in seen["npu_il"]
    args = seen["args"]
    assert args[args.index("--placer") + 1] == "static" and args[args.index("--router") + 1] == expect[0]
    assert args.count("--router") == 1
    # router2's timing-driven rip-up, as fluidnpu synth (router1 has no such option)
    assert ("--tmg-ripup" in args) == expect[1]
    pinned = {n for n, c in seen["cells"].items() if "BEL" in c["attributes"]}
    assert pinned == set(names) - {"sram.mem0"}
    bels = [seen["cells"][n]["attributes"]["BEL"] for n in sorted(pinned)]
    assert len(set(bels)) == len(bels) and all(b.endswith(("EBR0", "EBR1", "EBR2", "EBR3")) for b in bels)
    assert not (tmp_path / "out").exists()


def test_build_tries_seeds_until_one_meets_timing(tmp_path, monkeypatch):
    """``seeds``: a seed whose nextpnr run is stopped (router2 not converging) or misses
    timing gives way to the next, on the same netlist; board.json records the seed used and
    every attempt, and the bitstream is the last seed's. Stand-in tools: yosys writes an
    empty netlist, nextpnr times out on seed 1, misses timing on seed 2, meets it on seed 3."""
    from fluidnpu.synth import board_build
    from fluidnpu.synth.tools import ToolTimeout
    monkeypatch.setattr(board_build, "find_tool", lambda key: [key])
    monkeypatch.setattr(board_build, "tool_version", lambda key: "test")
    monkeypatch.setattr(board_build, "parse_yosys_stat", lambda text, top: {"by_type": {}})
    monkeypatch.setattr(board_build, "resources_from",
                        lambda fam, by_type, util, cap: ({"luts": 1}, {"luts": 10}))
    ran = []

    def tool(key, args, cwd=None, timeout=None, **kw):
        if key == "yosys":
            (cwd / "soc.json").write_text(json.dumps({"modules": {"soc": {"cells": {}}}}))
            (cwd / "yosys.log").write_text("")
            return 0.0
        if key == "ecppack":
            (cwd / "soc.bit").write_bytes(b"bit")
            return 0.0
        seed = int(args[args.index("--seed") + 1])
        ran.append((seed, timeout, args.count("--seed")))
        if seed == 1:
            raise ToolTimeout(f"nextpnr-ecp5: no result after {timeout:.0f} s", cwd / "nextpnr.log", timeout)
        mhz = 38.0 if seed == 2 else 42.5
        (cwd / "report.json").write_text(json.dumps({"fmax": {"crg_clk": {"achieved": mhz, "constraint": 40.0}}}))
        (cwd / "nextpnr.log").write_text("")
        return 0.0
    monkeypatch.setattr(board_build, "run_tool", tool)
    info = board_build.build_board(SMALL, tmp_path / "out", seeds=(1, 2, 3), pnr_timeout=600.0)
    assert ran == [(1, 600.0, 1), (2, 600.0, 1), (3, 600.0, 1)]
    assert info["seed"] == 3 and info["timing_met"] and info["fmax_mhz"] == 42.5
    assert [a["seed"] for a in info["seed_attempts"]] == [1, 2, 3]
    assert info["seed_attempts"][0]["result"] == "no result after 600 s"
    assert [a.get("timing_met") for a in info["seed_attempts"]] == [None, False, True]
    assert (tmp_path / "out" / "soc.bit").read_bytes() == b"bit"
    assert json.loads((tmp_path / "out" / "board.json").read_text())["seed"] == 3
    # every seed stopped: an error naming them, nothing published
    ran.clear()
    monkeypatch.setattr(board_build, "run_tool", lambda key, args, cwd=None, timeout=None, **kw:
                        tool(key, args, cwd=cwd, timeout=timeout) if key != "nextpnr-ecp5"
                        else (_ for _ in ()).throw(ToolTimeout("stopped", cwd / "nextpnr.log", timeout)))
    with pytest.raises(board_build.BoardBuildError, match=r"no seed of 4, 5 finished in time \(seed 4: no result "
                       r"after 60 s; seed 5: no result after 60 s\)"):
        board_build.build_board(SMALL, tmp_path / "out2", seeds=(4, 5), pnr_timeout=60.0)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match=r"seeds = \(1, 1\): must be distinct"):
        board_build.build_board(SMALL, tmp_path / "out3", seeds=(1, 1))
