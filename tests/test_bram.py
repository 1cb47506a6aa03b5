"""WordRAM: behaviour on the Amaranth simulator (the path every simulation uses), and the
ECP5 blocks it becomes (count, widths, output registers), run on Icarus with a behavioural
DP16KD (tests/data/dp16kd_model.v) against the same Python model."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.sim import Simulator

from fluidnpu.hw.bram import WordRAM, ecp5_tiling

DATA = Path(__file__).parent / "data"


class _ECP5:
    """Stands in for an amaranth-boards ECP5 platform: WordRAM looks only at this."""
    family = "ecp5"


def _trace(depth, elems, width, n, seed):
    """Random writes (an enable per element) and reads; the expected read data two cycles
    after each read address (``None`` where the word was written in the two cycles before,
    which the contract leaves undefined)."""
    rng = np.random.default_rng(seed)
    mem = {}
    steps, want = [], []
    recent = []
    for t in range(n):
        en = int(rng.integers(0, 1 << elems))
        wa = int(rng.integers(0, depth))
        wd = [int(v) for v in rng.integers(0, 1 << width, elems)]
        ra = int(rng.integers(0, depth)) if rng.random() < 0.5 or not mem else int(rng.choice(list(mem)))
        word = mem.get(ra, [0] * elems)
        want.append(None if ra in recent else list(word))
        steps.append((en, wa, wd, ra))
        if en:
            cur = mem.setdefault(wa, [0] * elems)
            for e in range(elems):
                if en >> e & 1:
                    cur[e] = wd[e]
        recent = [wa if en else None] + recent[:1]
    return steps, want


@pytest.mark.parametrize("depth, elems, width", [(4096, 4, 8), (256, 8, 8), (64, 3, 16)])
def test_generic_reads_two_cycles_later(depth, elems, width):
    dut = WordRAM(depth=depth, elems=elems, width=width)
    steps, want = _trace(depth, elems, width, 300, depth + elems)
    got = []

    async def tb(ctx):
        for en, wa, wd, ra in steps:
            ctx.set(dut.wr_en, en)
            ctx.set(dut.wr_addr, wa)
            ctx.set(dut.wr_data, wd)
            ctx.set(dut.rd_addr, ra)
            await ctx.tick()
            got.append([int(v) for v in ctx.get(dut.rd_data)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    # got[t] is after t+1 edges: the read presented at t - 1
    checked = 0
    for t in range(1, len(steps)):
        if want[t - 1] is not None:
            assert got[t] == want[t - 1], t
            checked += 1
    assert checked > 200


def test_tiling_uses_the_fewest_blocks():
    t = ecp5_tiling(1024, 8, 8)                     # the 8 x 8's X group: 1024 x 18, 2 per block
    assert (t.mode, t.per_tile, t.tiles) == (18, 2, 4)
    assert ecp5_tiling(256, 8, 8).tiles == 2        # its W memory: 512 x 36, 4 per block
    t = ecp5_tiling(4096, 4, 8)                     # the 4 x 4's X group: nibbles, 4096 deep
    assert (t.mode, t.slices, t.tiles) == (4, 2, 8)
    assert ecp5_tiling(16385, 4, 8) is None         # past one block's depth: inferred


def _cells(il):
    return re.findall(r"cell \\DP16KD .*?\n  end", il, flags=re.S)


@pytest.mark.parametrize("depth, elems, width", [(1024, 8, 8), (256, 8, 8), (4096, 4, 8)])
def test_ecp5_blocks_with_output_registers(depth, elems, width):
    il = rtlil.convert(WordRAM(depth=depth, elems=elems, width=width), platform=_ECP5())
    cells = _cells(il)
    t = ecp5_tiling(depth, elems, width)
    assert len(cells) == t.tiles
    for c in cells:
        assert re.search(r'parameter \\REGMODE_B "OUTREG"', c)
        assert re.search(rf"parameter \\DATA_WIDTH_B {t.mode}\b", c)
    assert "$mem" not in il
    plain = rtlil.convert(WordRAM(depth=depth, elems=elems, width=width))
    assert not _cells(plain)


@pytest.mark.rtl
@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
@pytest.mark.parametrize("depth, elems, width", [
    (1024, 8, 8),      # 18-bit blocks, two elements each, byte enables
    (256, 8, 8),       # 36-bit pseudo dual port, four elements each
    (2048, 3, 8),      # 9-bit blocks, one element each
    (4096, 4, 8),      # nibble slices, two blocks per element
    (512, 3, 16),      # 36-bit blocks, 18-bit elements (two enables each)
])
def test_ecp5_blocks_behave_on_icarus(tmp_path, depth, elems, width):
    # two copies of the write address, the only ones the blocks read on ECP5 (``wr_addr``
    # is held at 0 here, so a block wired to it, or to no copy, fails)
    dut = WordRAM(depth=depth, elems=elems, width=width, addr_copies=2)
    (tmp_path / "dut.v").write_text(verilog.convert(dut, name="dut", platform=_ECP5()))
    steps, want = _trace(depth, elems, width, 200, 7 * depth + elems)
    pack = lambda vals: sum(v << (width * i) for i, v in enumerate(vals))
    W = elems * width
    lines = [
        "`timescale 1ns/1ps",
        "module tb;",
        "reg clk = 0, rst = 0;",
        f"reg [{elems - 1}:0] en; reg [{W - 1}:0] wd; wire [{W - 1}:0] rd;",
        f"reg [{(depth - 1).bit_length() - 1}:0] wa, ra;",
        "dut d(.clk(clk), .rst(rst), .wr_en(en), .wr_addr(0), .wr_addr_rep({2{wa}}), .wr_data(wd),"
        " .rd_addr(ra), .rd_data(rd));",
        "initial begin",
    ]
    for en, wa, wd, ra in steps:
        lines.append(f"en = {elems}'d{en}; wa = {wa}; wd = {W}'d{pack(wd)}; ra = {ra};"
                     f" #1 clk = 1; #1 clk = 0; $display(\"%0d\", rd);")
    lines += ["$finish;", "end", "endmodule"]
    (tmp_path / "tb.v").write_text("\n".join(lines))
    subprocess.run(["iverilog", "-g2005", "-o", str(tmp_path / "sim"), str(tmp_path / "tb.v"),
                    str(tmp_path / "dut.v"), str(DATA / "dp16kd_model.v")], check=True)
    out = subprocess.run(["vvp", "-n", str(tmp_path / "sim")], check=True, capture_output=True,
                         text=True).stdout.split()
    got = [int(v) if v.isdigit() else None for v in out]     # x before the first read lands
    assert len(got) == len(steps)
    checked = 0
    for t in range(1, len(steps)):
        if want[t - 1] is not None:
            assert got[t] == pack(want[t - 1]), (t, steps[t - 1])
            checked += 1
    assert checked > 100
