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


def _read_enables(n, hold, seed):
    """``rd_en`` per step: always high, or low in about a third of the steps (``hold``)."""
    rng = np.random.default_rng(seed)
    return [1 if not hold else int(rng.random() >= 0.35) for _ in range(n)]


def _expected_out(want, re):
    """``rd_data`` after each step's edge: the read register takes ``want[t]`` and the output
    register the read register's word at the edges of enabled steps (``_UNSET`` before the
    first two, ``None`` where the word read was undefined)."""
    rd = out = _UNSET
    res = []
    for w, e in zip(want, re):
        if e:
            out, rd = rd, w
        res.append(out)
    return res


_UNSET = object()


@pytest.mark.parametrize("hold", [False, True])
@pytest.mark.parametrize("depth, elems, width", [(4096, 4, 8), (256, 8, 8), (64, 3, 16)])
def test_generic_reads_two_cycles_later(depth, elems, width, hold):
    """The word two enabled cycles after its address; with ``rd_en`` low both registers
    hold (the drain's stall)."""
    dut = WordRAM(depth=depth, elems=elems, width=width)
    steps, want = _trace(depth, elems, width, 300, depth + elems)
    re = _read_enables(len(steps), hold, depth)
    got = []

    async def tb(ctx):
        for (en, wa, wd, ra), r in zip(steps, re):
            ctx.set(dut.wr_en, en)
            ctx.set(dut.wr_addr, wa)
            ctx.set(dut.wr_data, wd)
            ctx.set(dut.rd_addr, ra)
            ctx.set(dut.rd_en, r)
            await ctx.tick()
            got.append([int(v) for v in ctx.get(dut.rd_data)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    # got[t] is after t+1 edges
    checked = 0
    for t, exp in enumerate(_expected_out(want, re)):
        if exp is not None and exp is not _UNSET:
            assert got[t] == exp, t
            checked += 1
    assert checked > (120 if hold else 200)


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
@pytest.mark.parametrize("depth, elems, width, hold", [
    (1024, 8, 8, False),     # 18-bit blocks, two elements each, byte enables
    (256, 8, 8, True),       # 36-bit pseudo dual port, four elements each; rd_en low at times
    (2048, 3, 8, False),     # 9-bit blocks, one element each
    (4096, 4, 8, True),      # nibble slices, two blocks per element
    (512, 3, 16, False),     # 36-bit blocks, 18-bit elements (two enables each)
])
def test_ecp5_blocks_behave_on_icarus(tmp_path, depth, elems, width, hold):
    # two copies of the write address, the only ones the blocks read on ECP5 (``wr_addr``
    # is held at 0 here, so a block wired to it, or to no copy, fails)
    dut = WordRAM(depth=depth, elems=elems, width=width, addr_copies=2)
    (tmp_path / "dut.v").write_text(verilog.convert(dut, name="dut", platform=_ECP5()))
    steps, want = _trace(depth, elems, width, 200, 7 * depth + elems)
    re = _read_enables(len(steps), hold, depth + 1)
    pack = lambda vals: sum(v << (width * i) for i, v in enumerate(vals))
    W = elems * width
    lines = [
        "`timescale 1ns/1ps",
        "module tb;",
        "reg clk = 0, rst = 0;",
        f"reg [{elems - 1}:0] en; reg [{W - 1}:0] wd; wire [{W - 1}:0] rd;",
        f"reg [{(depth - 1).bit_length() - 1}:0] wa, ra; reg re;",
        "dut d(.clk(clk), .rst(rst), .wr_en(en), .wr_addr(0), .wr_addr_rep({2{wa}}), .wr_data(wd),"
        " .rd_addr(ra), .rd_en(re), .rd_data(rd));",
        "initial begin",
    ]
    for (en, wa, wd, ra), r in zip(steps, re):
        lines.append(f"en = {elems}'d{en}; wa = {wa}; wd = {W}'d{pack(wd)}; ra = {ra}; re = {r};"
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
    for t, exp in enumerate(_expected_out(want, re)):
        if exp is not None and exp is not _UNSET:
            assert got[t] == pack(exp), (t, steps[t])
            checked += 1
    assert checked > (60 if hold else 100)
