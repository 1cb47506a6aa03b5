"""The ECP5 floorplan (synth/floorplan.py): every operand memory whole and contiguous in
one block-RAM row, W g beside X g, rows in fill order; each PE's multipliers side by side in
the DSP row nearest its memories; the site tables checked against nextpnr when the tools
are installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from fluidnpu.hw.bram import ecp5_tiling
from fluidnpu.hw.buffers import mem_shape
from fluidnpu.hw.config import HwConfig
from fluidnpu.synth.floorplan import DSP_ROWS, EBR_ROWS, apply_floorplan, plan_dsp, plan_ebr

ROWS = EBR_ROWS["85k"]


def names_for(cfg: HwConfig, prefix="harness.core.bufs."):
    """The DP16KD cells the generator makes for ``cfg``'s operand memories (hw/bram.py)."""
    out = []
    for w in "xw":
        t = ecp5_tiling(*mem_shape(cfg, w), cfg.data_width)
        out += [f"{prefix}{w}mem{g}.bram{i}" for g in range(cfg.tc) for i in range(t.tiles)]
    return out


def site(bel):
    x, y, _ = map(int, re.fullmatch(r"X(\d+)/Y(\d+)/EBR(\d)", bel).groups())
    row = next(r for r in ROWS if bel in r)
    return y, row.index(bel)


CONFIGS = {"4x4": HwConfig(tc=4, tp=4, x_buf_elems=65536, w_buf_elems=16384), "8x4": HwConfig(tp=4),
           "default 8x8": HwConfig(),
           "16x8": HwConfig(tc=16, tp=8, mem_bytes=8)}


def test_site_table_shape():
    assert len(ROWS) == 4 and all(len(r) == 52 for r in ROWS)
    assert len({b for r in ROWS for b in r}) == 208           # the LFE5U-85F's 208 blocks
    assert [r[0].split("/")[1] for r in ROWS] == ["Y46", "Y22", "Y70", "Y82"]
    dsp = DSP_ROWS["85k"]
    assert sorted(dsp) == ["Y10", "Y34", "Y58"] and all(len(r) == 52 for r in dsp.values())
    assert len({b for r in dsp.values() for b in r}) == 156    # the LFE5U-85F's 156 MULT18


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
    assert set(plan.rows) == ({"Y46", "Y22"} if n_blocks <= 2 * 52 else {"Y46", "Y22", "Y70", "Y82"}), n_blocks
    assert sum(len(v) for v in plan.rows.values()) == 2 * cfg.tc


def mult_names(cfg: HwConfig, prefix="harness.core."):
    """The PE array's and the drain's MULT18X18D cells for ``cfg`` (hw/pe_array.py, drain.py)."""
    return ([f"{prefix}pe.mul_{pe}_{l}.mult" for pe in range(cfg.tc) for l in range(cfg.tp)]
            + [f"{prefix}drain.mul_{h}{i}.mult" for i in range(cfg.elems_per_beat)
               for h in ("lo", "hi")]
            + [f"{prefix}drain.rowmul.mult"])


@pytest.mark.parametrize("name", ["4x4", "8x4", "default 8x8"])
def test_each_pe_on_neighbouring_dsp_sites_near_its_memories(name):
    cfg = CONFIGS[name]
    ebr = plan_ebr(names_for(cfg), "85k")
    plan = plan_dsp(mult_names(cfg), ebr.rows, "85k")
    assert set(plan.bels) == set(mult_names(cfg)[:cfg.lanes])      # the drain's: nextpnr's
    assert len(set(plan.bels.values())) == cfg.lanes
    pe_ebr = {int(m[1:]): int(y[1:]) for y, ms in ebr.rows.items() for m in ms if m[0] == "w"}
    rows = DSP_ROWS["85k"]
    for pe in range(cfg.tc):
        bels = [plan.bels[f"harness.core.pe.mul_{pe}_{l}.mult"] for l in range(cfg.tp)]
        (y,) = {b.split("/")[1] for b in bels}
        idx = [rows[y].index(b) for b in bels]
        assert idx == list(range(idx[0], idx[0] + cfg.tp)), f"pe{pe} not contiguous: {idx}"
        # no DSP row is nearer the PE's memories (ties to the south)
        dist = abs(int(y[1:]) - pe_ebr[pe])
        assert all(abs(int(r[1:]) - pe_ebr[pe]) >= dist for r in rows), (pe, y)
    # PEs of one block-RAM row (stacking partners 2u, 2u + 1) are neighbours in their DSP row
    for pe in range(0, cfg.tc, 2):
        a = plan.bels[f"harness.core.pe.mul_{pe}_{cfg.tp - 1}.mult"]
        b = plan.bels[f"harness.core.pe.mul_{pe + 1}_0.mult"]
        r = rows[a.split("/")[1]]
        assert b in r and r.index(b) == r.index(a) + 1


def test_dsp_plan_on_the_8x8_rows():
    """The measured 8 x 8 floorplan (docs/synthesis.md, 5 Dec 2026): PE pairs (0, 1) in block-RAM
    row Y46 over DSP row Y34, (2, 3) in Y22 over Y10, (4, 5) and (6, 7) in Y70 and Y82 over
    Y58, each row's first pair centred."""
    cfg = CONFIGS["default 8x8"]
    ebr = plan_ebr(names_for(cfg), "85k")
    assert ebr.rows == {"Y46": ["x0", "w0", "w1", "x1"], "Y22": ["x2", "w2", "w3", "x3"],
                        "Y70": ["x4", "w4", "w5", "x5"], "Y82": ["x6", "w6", "w7", "x7"]}
    plan = plan_dsp(mult_names(cfg), ebr.rows, "85k")
    assert plan.rows == {"Y34 DSP": ["pe0", "pe1"], "Y10 DSP": ["pe2", "pe3"],
                         "Y58 DSP": ["pe4", "pe5", "pe6", "pe7"]}
    first = {pe: DSP_ROWS["85k"][y].index(plan.bels[f"harness.core.pe.mul_{pe}_0.mult"])
             for y, pes in {"Y34": [0], "Y10": [2], "Y58": [4, 6]}.items() for pe in pes}
    assert first == {0: 18, 2: 18, 4: 18, 6: 34}


def _pe_rows(bels: dict, cfg: HwConfig):
    """Per PE: (block-RAM row of its memories, DSP row of its multipliers, their indices)."""
    rows = DSP_ROWS["85k"]
    out = {}
    for pe in range(cfg.tc):
        (ey,) = {bels[n].split("/")[1] for n in names_for(cfg) if re.search(rf"mem{pe}\.", n)}
        mul = [bels[f"harness.core.pe.mul_{pe}_{l}.mult"] for l in range(cfg.tp)]
        (dy,) = {b.split("/")[1] for b in mul}
        out[pe] = (int(ey[1:]), dy, [rows[dy].index(b) for b in mul])
    return out


def test_16x8_fills_the_rows_so_every_pe_is_pinned(tmp_path):
    """The 16 x 8's balanced rows (four PEs in each block-RAM row) put eight PEs nearest DSP
    row Y58, which has 52 sites: the flow fills the rows whole instead (five, five, five,
    one) and pins every PE's multipliers in the DSP row nearest its memories."""
    cfg = CONFIGS["16x8"]
    mults = mult_names(cfg)
    balanced = plan_ebr(names_for(cfg), "85k")
    assert [len(v) for v in balanced.rows.values()] == [8, 8, 8, 8]
    assert plan_dsp(mults, balanced.rows, "85k") is None        # Y58 would take 64 lanes
    design = {"modules": {"top": {"cells": {
        **{n: {"type": "DP16KD", "attributes": {}} for n in names_for(cfg)},
        **{n: {"type": "MULT18X18D", "attributes": {}} for n in mults}}}}}
    path = tmp_path / "top.json"
    path.write_text(json.dumps(design))
    plan = apply_floorplan(path, "85k")
    assert plan.rows["Y46"][:2] == ["x0", "w0"] and len(plan.rows["Y82"]) == 2
    # the drain's 17 multipliers fit neither end of any row with the PEs centred (6 sites
    # at each end of Y34 and Y10): PEs packed west, the drain's east of them, each lane's
    # two side by side, the roomiest row first
    assert plan.rows["Y34 DSP"] == [f"pe{i}" for i in range(5)] + ["drain(12)"]
    assert plan.rows["Y10 DSP"] == [f"pe{i}" for i in range(5, 10)] + ["drain(5)"]
    assert plan.rows["Y58 DSP"] == [f"pe{i}" for i in range(10, 16)]
    cells = json.loads(path.read_text())["modules"]["top"]["cells"]
    bels = {n: c["attributes"]["BEL"] for n, c in cells.items() if "BEL" in c["attributes"]}
    assert set(bels) == set(names_for(cfg)) | set(mults)
    assert len(set(bels.values())) == len(bels)
    dsp = DSP_ROWS["85k"]
    at = {n: (b.split("/")[1], dsp[b.split("/")[1]].index(b)) for n, b in bels.items() if "MULT" in b}
    assert at["harness.core.pe.mul_0_0.mult"] == ("Y34", 0) and at["harness.core.pe.mul_5_0.mult"] == ("Y10", 0)
    for l in range(8):
        (ylo, ilo), (yhi, ihi) = (at[f"harness.core.drain.mul_{h}{l}.mult"] for h in ("lo", "hi"))
        assert ylo == yhi == ("Y34" if l < 6 else "Y10") and ihi == ilo + 1 and ilo >= 40
    assert at["harness.core.drain.rowmul.mult"] == ("Y10", 44)
    for pe, (ey, dy, idx) in _pe_rows(bels, cfg).items():
        assert idx == list(range(idx[0], idx[0] + cfg.tp)), f"pe{pe} not contiguous: {idx}"
        dist = abs(int(dy[1:]) - ey)
        assert all(abs(int(r[1:]) - ey) >= dist for r in DSP_ROWS["85k"]), (pe, ey, dy)
    assert plan.mults_left == 0 and "left to nextpnr" not in plan.summary()


def test_the_flow_says_when_multipliers_are_left_to_nextpnr(tmp_path):
    """A PE wider than a DSP row (53 lanes, 52 sites): no plan pins its multipliers, and the
    floorplan line says how many PE multipliers nextpnr places (not the drain's)."""
    design = {"modules": {"top": {"cells": {
        **{f"a.{k}mem0.bram0": {"type": "DP16KD", "attributes": {}} for k in "xw"},
        **{f"a.pe.mul_0_{l}.mult": {"type": "MULT18X18D", "attributes": {}} for l in range(53)},
        "a.drain.rowmul.mult": {"type": "MULT18X18D", "attributes": {}}}}}}
    path = tmp_path / "top.json"
    path.write_text(json.dumps(design))
    plan = apply_floorplan(path, "85k")
    assert plan.mults_left == 53
    assert plan.summary() == ("Y46: x0 w0; 53 PE multipliers left to nextpnr (the DSP rows "
                              "nearest their memories have too few sites)")
    cells = json.loads(path.read_text())["modules"]["top"]["cells"]
    assert not any("BEL" in c["attributes"] for n, c in cells.items() if "mul" in n)


def test_fill_keeps_a_pe_in_one_row():
    """Filled rows cut between PEs only: X g and W g share a row, in PE order."""
    cfg = CONFIGS["16x8"]
    plan = plan_ebr(names_for(cfg), "85k", fill=True)
    assert list(plan.rows) == ["Y46", "Y22", "Y70", "Y82"]
    seen = []
    for mems in plan.rows.values():
        pes = [int(m[1:]) for m in mems]
        assert all(pes.count(g) == 2 for g in set(pes))
        seen += sorted(set(pes))
    assert seen == list(range(cfg.tc))
    assert plan_ebr([f"a.xmem{g}.bram{i}" for g in range(2) for i in range(40)], "85k",
                    fill=True).rows == {"Y46": ["x0"], "Y22": ["x1"]}

def test_nothing_to_pin():
    assert plan_dsp(["harness.core.drain.rowmul.mult"], {"Y46": ["x0", "w0"]}, "85k") is None
    assert plan_dsp(mult_names(HwConfig()), {"Y46": ["x0", "w0"]}, "85k") is None  # PEs without memories
    assert plan_dsp(mult_names(HwConfig()), {}, "25k") is None
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
    assert plan.rows == {"Y46": ["x0", "w0"]}                   # no multipliers: no DSP rows
    assert cells["a.xmem0.bram0"]["attributes"]["keep"] == "1"
    assert [f.name for f in tmp_path.iterdir()] == ["top.json"]



def _probe(tmp_path, verilog: str, cell_type: str, rename) -> tuple[dict, list]:
    """Synthesise ``verilog`` (yosys), rename its ``cell_type`` cells in sorted order by
    ``rename(i)`` (``None``: keep), write the netlist back; returns ``(design, cells)``."""
    (tmp_path / "top.v").write_text(verilog)
    subprocess.run(["yosys", "-q", "-p", "synth_ecp5 -top top -json top.json", "top.v"],
                   cwd=tmp_path, check=True)
    design = json.loads((tmp_path / "top.json").read_text())
    cells = design["modules"]["top"]["cells"]
    found = sorted(n for n, c in cells.items() if c["type"] == cell_type)
    ren = {old: rename(i) for i, old in enumerate(found) if rename(i)}
    design["modules"]["top"]["cells"] = {ren.get(n, n): c for n, c in cells.items()}
    (tmp_path / "top.json").write_text(json.dumps(design))
    return design, found


def _placed(tmp_path, cell_type: str, *args: str) -> dict:
    """Place ``top.json`` with nextpnr; the ``cell_type`` cells' sites by name."""
    from fluidnpu.synth.tools import find_tool
    subprocess.run([*find_tool("nextpnr-ecp5"), "--85k", "--package", "CABGA381", "--json",
                    "top.json", "--write", "placed.json", "--quiet", *args],
                   cwd=tmp_path, check=True, capture_output=True)
    placed = json.loads((tmp_path / "placed.json").read_text())["modules"]["top"]["cells"]
    return {n: c["attributes"]["NEXTPNR_BEL"] for n, c in placed.items() if c["type"] == cell_type}


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
    # name 40 of them as two PEs' memories (as yosys names the generator's), keep the rest free
    mems = [(w, g, i) for g in range(2) for w, n in (("x", 16), ("w", 4)) for i in range(n)]
    _, brams = _probe(tmp_path, PROBE.format(n=208, n1=207), "DP16KD",
                      lambda i: "core.bufs.{}mem{}.bram{}".format(*mems[i]) if i < 40 else None)
    assert len(brams) == 208
    plan = apply_floorplan(tmp_path / "top.json", "85k")
    assert len(plan.bels) == 40
    got = _placed(tmp_path, "DP16KD", "--placer", "static")
    assert set(got.values()) == {b for r in ROWS for b in r}
    assert {n: got[n] for n in plan.bels} == plan.bels

DSP_PROBE = """module top(input clk, input d, output reg q);
  reg [35:0] sr;
  always @(posedge clk) sr <= {{sr[34:0], d}};
  wire [{n1}:0] x;
  genvar i;
  generate for (i = 0; i < {n}; i = i + 1) begin : g
    wire [35:0] p;
    MULT18X18D #(.REG_INPUTA_CLK("CLK0"), .REG_INPUTB_CLK("CLK0"), .REG_OUTPUT_CLK("CLK0")) m (
      .CLK0(clk), .CE0(1'b1), .RST0(1'b0), .SIGNEDA(1'b1), .SIGNEDB(1'b1), .SOURCEA(1'b0),
      .SOURCEB(1'b0), .A0(sr[i % 36]), .A1(sr[(i + 1) % 36]), .B0(sr[(i + 7) % 36]),
      .B1(sr[(i + 3) % 36]), .P0(p[0]), .P1(p[1]), .P2(p[2]));
    assign x[i] = ^p[2:0];
  end endgenerate
  always @(posedge clk) q <= ^x;
endmodule
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="Debian's yosys is not installed")
def test_dsp_sites_agree_with_nextpnr(tmp_path):
    """156 multipliers placed by nextpnr take exactly the table's sites; named as two PEs'
    lanes and pinned by plan_dsp, nextpnr keeps the pins."""
    design, mults = _probe(tmp_path, DSP_PROBE.format(n=156, n1=155), "MULT18X18D",
                           lambda i: f"c.pe.mul_{i // 4}_{i % 4}.mult" if i < 8 else None)
    assert len(mults) == 156
    cells = design["modules"]["top"]["cells"]
    plan = plan_dsp(list(cells), {"Y46": ["x0", "w0", "w1", "x1"]}, "85k")
    for n, bel in plan.bels.items():
        cells[n].setdefault("attributes", {})["BEL"] = bel
    (tmp_path / "top.json").write_text(json.dumps(design))
    got = _placed(tmp_path, "MULT18X18D")
    assert set(got.values()) == {b for r in DSP_ROWS["85k"].values() for b in r}
    assert {n: got[n] for n in plan.bels} == plan.bels
