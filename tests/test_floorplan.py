"""The ECP5 block-RAM floorplan (synth/floorplan.py): every operand memory whole and
contiguous in one row, W g beside X g, central rows first; the site table checked against
nextpnr when the tools are installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from fluidnpu.hw.bram import ecp5_tiling
from fluidnpu.hw.config import HwConfig
from fluidnpu.synth.floorplan import EBR_ROWS, apply_floorplan, plan_ebr

ROWS = EBR_ROWS["85k"]


def names_for(cfg: HwConfig, prefix="harness.core.bufs."):
    """The DP16KD cells the generator makes for ``cfg``'s operand memories (hw/bram.py)."""
    out = []
    for w, depth in (("x", cfg.x_depth), ("w", cfg.w_depth)):
        t = ecp5_tiling(2 * depth, cfg.tp, cfg.data_width)
        out += [f"{prefix}{w}mem{g}.bram{i}" for g in range(cfg.tc) for i in range(t.tiles)]
    return out


def site(bel):
    x, y, _ = map(int, re.fullmatch(r"X(\d+)/Y(\d+)/EBR(\d)", bel).groups())
    row = next(r for r in ROWS if bel in r)
    return y, row.index(bel)


CONFIGS = {"4x4": HwConfig(tc=4, x_buf_elems=65536, w_buf_elems=16384), "default 8x4": HwConfig(),
           "8x8": HwConfig(tc=8, tp=8, mem_bytes=8),
           "16x8": HwConfig(tc=16, tp=8, mem_bytes=8)}


def test_site_table_shape():
    assert len(ROWS) == 4 and all(len(r) == 52 for r in ROWS)
    assert len({b for r in ROWS for b in r}) == 208           # the LFE5U-85F's 208 blocks
    assert [r[0].split("/")[1] for r in ROWS] == ["Y46", "Y70", "Y22", "Y82"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_memories_are_whole_contiguous_and_paired(name):
    cfg = CONFIGS[name]
    names = names_for(cfg) + ["harness.ram.0.0", "core.drain.psum.bram0"]
    plan = plan_ebr(names, "85k")
    assert plan is not None
    assert set(plan.bels) == set(names_for(cfg))               # only the operand memories
    assert len(set(plan.bels.values())) == len(plan.bels)       # one cell per site
    mems = {}
    for n, bel in plan.bels.items():
        w, g, i = re.search(r"(x|w)mem(\d+)\.bram(\d+)$", n).groups()
        mems.setdefault(f"{w}{g}", []).append((int(i), site(bel)))
    for m, blocks in mems.items():
        rows = {y for _, (y, _) in blocks}
        assert len(rows) == 1, f"{m} spans rows {rows}"
        idx = [k for _, (_, k) in sorted(blocks)]
        assert idx == list(range(idx[0], idx[0] + len(idx))), f"{m} is not contiguous: {idx}"
    for g in range(cfg.tc):                                      # W g touches X g
        (wy, wi), (xy, xi) = (min(s for _, s in mems[f"{k}{g}"]) for k in "wx")
        wn, xn = len(mems[f"w{g}"]), len(mems[f"x{g}"])
        assert wy == xy and (wi + wn == xi or xi + xn == wi)
    # the central rows only, as long as the memories fit them (the 4 x 4's 80 blocks); the
    # default's 160 (X 131072 elements per slot) take the outer rows too
    n_blocks = len(plan.bels)
    assert set(plan.rows) == ({"Y46", "Y70"} if n_blocks <= 2 * 52 else {"Y46", "Y70", "Y22", "Y82"}), n_blocks
    assert sum(len(v) for v in plan.rows.values()) == 2 * cfg.tc


def test_nothing_to_pin():
    assert plan_ebr(["harness.ram.0.0"], "85k") is None
    assert plan_ebr(names_for(HwConfig()), "25k") is None       # no site table: nextpnr places
    too_big = [f"a.xmem0.bram{i}" for i in range(53)]            # wider than a row
    assert plan_ebr(too_big, "85k") is None


def test_apply_rewrites_the_netlist(tmp_path):
    cell = {"type": "DP16KD", "attributes": {"keep": "1"}}
    design = {"modules": {"top": {"cells": {
        "a.xmem0.bram0": dict(cell), "a.xmem0.bram1": dict(cell), "a.wmem0.bram0": dict(cell),
        "a.lut": {"type": "LUT4", "attributes": {}}}}}}
    p = tmp_path / "top.json"
    p.write_text(json.dumps(design))
    plan = apply_floorplan(p, "85k")
    cells = json.loads(p.read_text())["modules"]["top"]["cells"]
    assert {n: c["attributes"].get("BEL") for n, c in cells.items()} == {**plan.bels, "a.lut": None}
    assert cells["a.xmem0.bram0"]["attributes"]["keep"] == "1"
    assert [f.name for f in tmp_path.iterdir()] == ["top.json"]


PROBE = """module top(input clk, input [13:0] a, output reg o);
  wire [{n1}:0] q;
  genvar i;
  generate for (i = 0; i < {n}; i = i + 1) begin : g
    wire [17:0] d;
    DP16KD #(.DATA_WIDTH_A(18), .DATA_WIDTH_B(18)) r (
      .CLKA(clk), .CLKB(clk), .CEA(1'b1), .CEB(1'b1), .OCEA(1'b1), .OCEB(1'b1),
      .WEA(1'b0), .WEB(1'b0), .RSTA(1'b0), .RSTB(1'b0), .ADA0(a[0] ^ i[0]), .ADA4(a[4]),
      .ADA5(a[5]), .ADA6(a[6]), .DOA0(d[0]));
    assert q[i] = d[0];
  end endgenerate
  always @(posedge clk) o <= ^q;
endmodule
""".replace("assert q", "assign q")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="Debian's yosys is not installed")
def test_sites_and_pins_agree_with_nextpnr(tmp_path):
    """A design filling every block of the 85F, placed by nextpnr: its sites are the table's.
    Then the same design with half its blocks named and pinned by the floorplan: nextpnr
    keeps every pin (the ``BEL`` attribute reaches it)."""
    from fluidnpu.synth.tools import find_tool
    nextpnr = find_tool("nextpnr-ecp5")
    (tmp_path / "top.v").write_text(PROBE.format(n=208, n1=207))
    subprocess.run(["yosys", "-q", "-p", "synth_ecp5 -top top -json top.json", "top.v"],
                   cwd=tmp_path, check=True)
    design = json.loads((tmp_path / "top.json").read_text())
    cells = design["modules"]["top"]["cells"]
    brams = sorted(n for n, c in cells.items() if c["type"] == "DP16KD")
    assert len(brams) == 208
    # name 40 of them as two PEs' memories (as yosys names the generator's), keep the rest free
    ren = {old: f"core.bufs.{w}mem{g}.bram{i}" for old, (w, g, i) in zip(
        brams, [(w, g, i) for g in range(2) for w, n in (("x", 16), ("w", 4)) for i in range(n)])}
    design["modules"]["top"]["cells"] = {ren.get(n, n): c for n, c in cells.items()}
    (tmp_path / "top.json").write_text(json.dumps(design))
    plan = apply_floorplan(tmp_path / "top.json", "85k")
    assert len(plan.bels) == 40
    subprocess.run([*nextpnr, "--85k", "--package", "CABGA381", "--json", "top.json",
                    "--write", "placed.json", "--placer", "static", "--quiet"],
                   cwd=tmp_path, check=True, capture_output=True)
    placed = json.loads((tmp_path / "placed.json").read_text())["modules"]["top"]["cells"]
    got = {n: c["attributes"]["NEXTPNR_BEL"] for n, c in placed.items() if c["type"] == "DP16KD"}
    assert set(got.values()) == {b for r in ROWS for b in r}
    assert {n: got[n] for n in plan.bels} == plan.bels
