"""The registered multiplier: behaviour in simulation, and the ECP5 block it becomes."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.drain import Drain
from fluidnpu.hw.dsp import Multiplier
from fluidnpu.hw.pe_array import PEArray

# the rejected constructions below are never elaborated, by design
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


class _ECP5:
    """Stands in for an amaranth-boards ECP5 platform: the multiplier looks only at this."""
    family = "ecp5"


def _model(a_seq, b_seq, en_seq):
    """Two registers that advance while ``en``: p after each cycle."""
    a_r = b_r = p = 0
    out = []
    for a, b, en in zip(a_seq, b_seq, en_seq):
        if en:
            a_r, b_r, p = a, b, a_r * b_r
        out.append(p)
    return out


@pytest.mark.parametrize("aw,bw", [(8, 8), (18, 16), (15, 16), (20, 20)])
def test_product_two_enabled_cycles_later(aw, bw):
    rng = np.random.default_rng(aw * 100 + bw)
    n = 200
    a_seq = [int(v) for v in rng.integers(-(1 << (aw - 1)), 1 << (aw - 1), n)]
    b_seq = [int(v) for v in rng.integers(-(1 << (bw - 1)), 1 << (bw - 1), n)]
    a_seq[:4] = [-(1 << (aw - 1))] * 4          # the extremes
    b_seq[:4] = [-(1 << (bw - 1)), (1 << (bw - 1)) - 1] * 2
    en_seq = [int(v) for v in rng.integers(0, 4, n) > 0]
    want = _model(a_seq, b_seq, en_seq)
    dut = Multiplier(a_width=aw, b_width=bw)
    got = []

    async def tb(ctx):
        for a, b, en in zip(a_seq, b_seq, en_seq):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, en)
            await ctx.tick()
            got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == want


def test_bad_width_is_rejected():
    with pytest.raises(ValueError, match="a_width = 0"):
        Multiplier(a_width=0, b_width=8)
    with pytest.raises(ValueError, match="b_width = True"):
        Multiplier(a_width=8, b_width=True)


def _mult_cells(il: str) -> list[str]:
    """The text of every MULT18X18D cell in RTLIL output."""
    return re.findall(r"cell \\MULT18X18D .*?\n  end", il, flags=re.S)


def test_ecp5_uses_the_blocks_own_registers():
    dut = Multiplier(a_width=8, b_width=8)
    (cell,) = _mult_cells(rtlil.convert(dut, platform=_ECP5()))
    for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert re.search(rf'parameter \\{reg} "CLK0"', cell), reg
    assert re.search(r"connect \\CE0 \\en", cell)
    assert re.search(r"connect \\CLK0 \\clk", cell)
    assert re.search(r"connect \\SIGNEDA 1'1", cell) and re.search(r"connect \\SIGNEDB 1'1", cell)
    # no fabric register around the block, and none at all without the ECP5 platform
    assert "$dff" not in rtlil.convert(dut, platform=_ECP5())
    plain = rtlil.convert(Multiplier(a_width=8, b_width=8))
    assert not _mult_cells(plain) and "$mul" in plain


def test_ecp5_wider_than_the_block_stays_behavioural():
    il = rtlil.convert(Multiplier(a_width=20, b_width=16), platform=_ECP5())
    assert not _mult_cells(il) and "$mul" in il


def test_ecp5_core_blocks_instantiate_one_block_per_multiply():
    cfg = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
    assert len(_mult_cells(rtlil.convert(PEArray(cfg), platform=_ECP5()))) == cfg.lanes
    # the drain: two per lane (y's low 17 bits and the rest, times mult) and row * os / M
    assert len(_mult_cells(rtlil.convert(Drain(cfg), platform=_ECP5()))) == 2 * cfg.elems_per_beat + 1


# A behavioural MULT18X18D for Icarus (yosys 0.23 ships only a black box): 18 x 18 signed
# (SIGNEDA/SIGNEDB high) or unsigned, with the input and output registers its REG_*_CLK
# parameters enable on CLK0/CE0.
def _bits(name, n):
    return ", ".join(f"{name}{i}" for i in range(n))


def _bus(name, n):
    return "{" + ", ".join(f"{name}{i}" for i in reversed(range(n))) + "}"


_MULT18_MODEL = f"""
module MULT18X18D({_bits("A", 18)}, {_bits("B", 18)}, {_bits("C", 18)},
                  SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0, {_bits("P", 36)});
  parameter REG_INPUTA_CLK = "NONE";  parameter REG_INPUTA_CE = "CE0";
  parameter REG_INPUTA_RST = "RST0";  parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTB_CE = "CE0";    parameter REG_INPUTB_RST = "RST0";
  parameter REG_OUTPUT_CLK = "NONE";  parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0";
  input {_bits("A", 18)}, {_bits("B", 18)}, {_bits("C", 18)};
  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0;
  output {_bits("P", 36)};
  wire [17:0] A = {_bus("A", 18)}, B = {_bus("B", 18)};
  reg [17:0] a_r = 0, b_r = 0;
  reg [35:0] p_r = 0;
  wire [17:0] a = REG_INPUTA_CLK == "CLK0" ? a_r : A;
  wire [17:0] b = REG_INPUTB_CLK == "CLK0" ? b_r : B;
  wire [35:0] p = $signed({{SIGNEDA & a[17], a}}) * $signed({{SIGNEDB & b[17], b}});
  always @(posedge CLK0) if (CE0) begin a_r <= A; b_r <= B; p_r <= p; end
  assign {_bus("P", 36)} = REG_OUTPUT_CLK == "CLK0" ? p_r : p;
endmodule
"""


@pytest.mark.rtl
@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
@pytest.mark.parametrize("aw,bw", [(8, 8), (18, 16), (9, 7), (1, 18)])
def test_ecp5_block_wiring_multiplies(tmp_path, aw, bw):
    """The ECP5 netlist (operands in the top bits of the block's inputs) against the product
    model, the block simulated behaviourally: every operand pair, extremes included, comes
    out two enabled cycles later."""
    rng = np.random.default_rng(aw * 37 + bw)
    n = 300
    a_seq = [int(v) for v in rng.integers(-(1 << (aw - 1)), 1 << (aw - 1), n)]
    b_seq = [int(v) for v in rng.integers(-(1 << (bw - 1)), 1 << (bw - 1), n)]
    a_seq[:4] = [-(1 << (aw - 1)), (1 << (aw - 1)) - 1] * 2
    b_seq[:4] = [-(1 << (bw - 1))] * 2 + [(1 << (bw - 1)) - 1] * 2
    en_seq = [int(v) for v in rng.integers(0, 4, n) > 0]
    dut = Multiplier(a_width=aw, b_width=bw)
    v = verilog.convert(dut, name="dut", platform=_ECP5())
    assert "MULT18X18D" in v
    (tmp_path / "dut.v").write_text(v + _MULT18_MODEL)
    hexw = lambda x, w: f"{x & ((1 << w) - 1):x}"
    (tmp_path / "vec.hex").write_text("".join(
        f"{hexw((en << (aw + bw)) | ((a & ((1 << aw) - 1)) << bw) | (b & ((1 << bw) - 1)), aw + bw + 1)}\n"
        for a, b, en in zip(a_seq, b_seq, en_seq)))
    (tmp_path / "tb.v").write_text(f"""`timescale 1ns/1ps
module tb;
  reg [{aw + bw}:0] vec [0:{n - 1}];
  reg clk = 0, rst = 0, en = 0;
  reg [{aw - 1}:0] a = 0;
  reg [{bw - 1}:0] b = 0;
  wire signed [{aw + bw - 1}:0] p;
  dut u(.clk(clk), .rst(rst), .a(a), .b(b), .en(en), .p(p));
  integer i;
  initial begin
    $readmemh("vec.hex", vec);
    for (i = 0; i < {n}; i = i + 1) begin
      {{en, a, b}} = vec[i];
      #1 clk = 1; #1 clk = 0;
      $display("%0d", p);
    end
    $finish;
  end
endmodule
""")
    subprocess.run(["iverilog", "-g2005", "-o", "sim", "tb.v", "dut.v"], cwd=tmp_path,
                   check=True, capture_output=True, text=True)
    res = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True,
                         text=True)
    assert [int(t) for t in res.stdout.split()] == _model(a_seq, b_seq, en_seq)


def test_ecp5_operands_leave_the_low_pins_constant():
    """An 8-bit operand drives 8 of the block's 18 input pins (the top ones); the 10 below
    are constant 0, not copies of its sign bit."""
    il = rtlil.convert(Multiplier(a_width=8, b_width=8), platform=_ECP5())
    (cell,) = _mult_cells(il)
    for port in "AB":
        for i in range(18):
            conn = re.search(rf"connect \\{port}{i} (\S+)", cell).group(1)
            assert (conn == "1'0") == (i < 10), (port, i, conn)
