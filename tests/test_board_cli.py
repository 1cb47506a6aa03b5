"""``fluidnpu board build`` / ``board run``: options checked before any work (usage errors
name the option and the value, exit status 2), failures reported in one line (exit 1).
The builds and runs themselves are stubbed here (docs/board.md has the real build's
figures; tests/test_board_sim.py runs the serving code on the simulated board)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("litex_boards")

from fluidnpu.cli import main  # noqa: E402
from fluidnpu.hw.regmap import regmap  # noqa: E402
from fluidnpu.hw.regmap_render import to_python  # noqa: E402
from fluidnpu.sim.cosim.run import COSIM_CONFIG  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def no_build(monkeypatch):
    from fluidnpu.synth import board_build

    def boom(*a, **k):
        raise AssertionError("the build started before the options were checked")
    monkeypatch.setattr(board_build, "build_board", boom)


@pytest.mark.parametrize("args, where", [
    (["--board", "ulx3s-12f"], "'--board': 'ulx3s-12f'"),
    (["--sys-clk-mhz", "300"], "'--sys-clk-mhz': 300.0 is not in the range 25<=x<=100"),
    (["--baud", "100"], "'--baud': 100"),
    (["--router", "router3"], "'--router': 'router3' is not one of 'auto', 'router1', 'router2'"),
    (["--seeds", "5-2"], "--seeds: seeds = '5-2': the range '5-2' is empty"),
    (["--seeds", "1,x"], "--seeds: seeds = '1,x': 'x' is not a seed"),
    (["--seed", "2", "--seeds", "1,2"], "give --seed or --seeds, not both"),
    (["--pnr-timeout", "0.5"], "'--pnr-timeout': 0.5 is not in the range x>=1"),
    (["--set", "mem_bytes=2"], "mem_bytes = 2"),
    # a port width the user fixed is not overridden: the SoC's bus is 32 bits
    (["--set", "mem_bytes=8"], "mem_bytes = 8: the SoC's bus is 32 bits"),
    (["--config", "/nonexistent/cfg.toml"], "/nonexistent/cfg.toml"),
])
def test_build_refuses_bad_options_before_work(args, where, no_build, tmp_path):
    res = run("board", "build", "--out", tmp_path / "o", *args)
    assert res.exit_code == 2, res.output
    assert where in res.output
    assert not (tmp_path / "o").exists()


def test_build_refuses_an_out_that_is_a_file(no_build, tmp_path):
    (tmp_path / "f").write_text("x")
    res = run("board", "build", "--out", tmp_path / "f")
    assert res.exit_code == 2 and "'--out'" in res.output and "is a file" in res.output


def _info(**kw):
    info = {"board": "ulx3s-85f", "device": "LFE5U-85F", "sys_clk_mhz": 50.0, "baud": 1_000_000,
            "npu_csr_base": 0x30000000, "main_ram_base": 0x40000000, "sdram_bytes": 32 << 20,
            "npu_mem_offset": 0, "npu_mem_bytes": 32 << 20, "config": COSIM_CONFIG.to_dict(),
            "csr": {"sdram_dfii_control": 0x1000}, "sdram_init": [],
            "resources": {k: {"used": 10, "available": 100, "share": 0.1} for k in ("luts", "ffs", "dsps", "brams")},
            "fmax_mhz": 55.0, "clocks": {"crg_clkout": {"achieved": 55.0, "constraint": 50.0}}, "timing_met": True,
            "stage_s": {"yosys": 1.0}, "elapsed_s": 2.0,
            "files": {"bitstream": "soc.bit", "regs": "npu_wb_regs.py"}}
    info.update(kw)
    return info


def test_build_reports_and_fails_on_timing(monkeypatch, tmp_path):
    from fluidnpu.synth import board_build
    built = []
    monkeypatch.setattr(board_build, "build_board", lambda cfg, out, **k: built.append(cfg) or _info())
    res = run("board", "build", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    # the default 8 x 8 leaves its port width to the target: the SoC's 32-bit bus
    assert [(c.tc, c.tp, c.mem_bytes) for c in built] == [(8, 8, 4)]
    assert "mem_bytes = 4: the SoC's bus is 32 bits" in res.output
    assert "Fmax 55.0 MHz (SoC clock 50 MHz: met)" in res.output and "openFPGALoader -b ulx3s" in res.output
    routers = []
    monkeypatch.setattr(board_build, "build_board",
                        lambda cfg, out, **k: routers.append(k["router"]) or _info())
    assert run("board", "build", "--out", tmp_path / "r", "--router", "router1").exit_code == 0
    assert run("board", "build", "--out", tmp_path / "s").exit_code == 0
    assert routers == ["router1", "auto"]
    # seeds: three in turn by default, each stopped after an hour; --seed gives one
    calls = []
    monkeypatch.setattr(board_build, "build_board", lambda cfg, out, **k: calls.append(k) or _info())
    assert run("board", "build", "--out", tmp_path / "t").exit_code == 0
    assert run("board", "build", "--out", tmp_path / "u", "--seed", "4", "--pnr-timeout", "30").exit_code == 0
    assert run("board", "build", "--out", tmp_path / "v", "--seeds", "2,5-6").exit_code == 0
    assert [(c["seeds"], c["pnr_timeout"]) for c in calls] == [((1, 2, 3), 3600.0), ((4,), 1800.0),
                                                               ((2, 5, 6), 3600.0)]

    def late(cfg, out, **k):
        info = _info(fmax_mhz=41.0, timing_met=False, clocks={"crg_clkout": {"achieved": 41.0, "constraint": 50.0}})
        info["files"].pop("bitstream")
        raise board_build.TimingFailed("timing not met (crg_clkout: 41.00 MHz for 50 MHz)", info)
    monkeypatch.setattr(board_build, "build_board", late)
    res = run("board", "build", "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "MISSED" in res.output and "error: timing not met (crg_clkout: 41.00 MHz for 50 MHz)" in res.output
    assert "openFPGALoader" not in res.output


@pytest.fixture
def build_dir(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    (d / "board.json").write_text(json.dumps(_info()))
    (d / "npu_wb_regs.py").write_text(to_python(regmap(COSIM_CONFIG, "npu")))
    return d


@pytest.mark.parametrize("edit, args, where", [
    (None, ["--port", "/dev/ttyNOPE9"], "'--port': /dev/ttyNOPE9: no such serial device"),
    (None, ["--port", "/dev/null", "--baud", "115200"], "--baud: 115200: the bitstream"),
    (None, ["--port", "/dev/null", "--model", "resnet8"], "--model: resnet8"),
    ("nobit", ["--port", "/dev/null"], "has no bitstream"),
    ("nojson", ["--port", "/dev/null"], "no board.json"),
    ("bad", ["--port", "/dev/null"], "not a board.json"),
])
def test_run_refuses_bad_options(edit, args, where, build_dir):
    if edit == "nobit":
        info = _info()
        info["files"].pop("bitstream")
        (build_dir / "board.json").write_text(json.dumps(info))
    elif edit == "nojson":
        (build_dir / "board.json").unlink()
    elif edit == "bad":
        (build_dir / "board.json").write_text("{}")
    res = run("board", "run", "--build", build_dir, *args)
    assert res.exit_code == 2, res.output
    assert where in res.output


def test_run_names_the_port_it_cannot_use(build_dir):
    """/dev/null exists but is no serial port: one line naming it, exit status 1."""
    res = run("board", "run", "--build", build_dir, "--port", "/dev/null", "--requests", "2")
    assert res.exit_code == 1, res.output
    assert res.output.startswith("error: /dev/null: cannot open the serial port at 1000000 baud")


@pytest.fixture
def no_sim(monkeypatch):
    from fluidnpu.sim.cosim import soc

    def boom(*a, **k):
        raise AssertionError("the simulation started before the options were checked")
    monkeypatch.setattr(soc, "run_soc_sim", boom)


@pytest.mark.parametrize("args, where", [
    ([], "Missing option '--port'"),
    (["--sim", "soc", "--port", "/dev/null"], "give one of --port and --sim"),
    (["--sim", "soc", "--baud", "115200"], "--baud: 115200: --sim soc has no UART"),
    (["--sim", "soc-uart", "--baud", "6000000"], "6000000 is not in the range"),
    (["--sim", "fpga"], "'fpga' is not one of 'soc', 'soc-uart'"),
    (["--sim", "soc", "--model", "resnet8"], "--model: resnet8"),
])
def test_run_sim_refuses_bad_options(args, where, no_sim, tmp_path):
    """`board run --sim`: no --build read (a folder without board.json is given), and the
    options are checked before the simulator starts; without --sim, --port is required."""
    res = run("board", "run", *(["--build", tmp_path / "none"] if "--sim" in args else []), *args)
    assert res.exit_code == 2, res.output
    assert where in res.output
