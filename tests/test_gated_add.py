"""The gated adder ``y = (gate ? 0 : a) + b``: the behavioural version on the Amaranth
simulator, and the ECP5 ``CCU2C`` chain it becomes, simulated with yosys' own cell models
(``ecp5/cells_sim.v``) under Icarus Verilog, both against numpy."""
import re

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.sim import Simulator

from fluidnpu.hw import gated_add
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.gated_add import GatedAdder
from fluidnpu.hw.pe_array import PEArray
from fluidnpu.hw.stack_tree import StackTree

from ecp5_cells import needs_cells, run_vectors


class _ECP5:
    """Stands in for an amaranth-boards ECP5 platform: the adder looks only at this."""
    family = "ecp5"


def _vectors(width, n, seed):
    rng = np.random.default_rng(seed)
    hi = 1 << width
    a = [int(v) for v in rng.integers(0, hi, n, dtype=np.uint64)]
    b = [int(v) for v in rng.integers(0, hi, n, dtype=np.uint64)]
    g = [int(v) for v in rng.integers(0, 2, n)]
    # the carry chain's extremes: all ones plus one, and the gate against them
    a[:4] = [hi - 1, hi - 1, hi - 1, 0]
    b[:4] = [1, 1, hi - 1, hi - 1]
    g[:4] = [0, 1, 0, 1]
    want = [((0 if gg else aa) + bb) % hi for aa, bb, gg in zip(a, b, g)]
    return a, b, g, want


@pytest.mark.parametrize("width", [1, 7, 32])
def test_behaviour(width):
    a, b, g, want = _vectors(width, 300, width)
    dut = GatedAdder(width=width)
    got = []

    async def tb(ctx):
        for aa, bb, gg in zip(a, b, g):
            ctx.set(dut.a, aa)
            ctx.set(dut.b, bb)
            ctx.set(dut.gate, gg)
            got.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert got == want


def _icarus_check(tmp_path, width, seed):
    """Simulate the ECP5 netlist of a ``width``-bit adder on vectors; the mismatches."""
    a, b, g, want = _vectors(width, 400, seed)
    v = verilog.convert(GatedAdder(width=width), platform=_ECP5(), name="dut")
    got = run_vectors(tmp_path, v, ("LUT4", "LUT2", "CCU2C"),
                      [("a", width), ("b", width), ("gate", 1)], ("y", width),
                      [(aa << (width + 1)) | (bb << 1) | gg for aa, bb, gg in zip(a, b, g)])
    return [(aa, bb, gg, y, w) for aa, bb, gg, y, w in zip(a, b, g, got, want) if y != w]


@needs_cells
@pytest.mark.parametrize("width", [2, 9, 32])
def test_ecp5_chain_matches_yosys_cell_models(tmp_path, width):
    assert _icarus_check(tmp_path, width, seed=width) == []


@needs_cells
def test_ecp5_check_catches_a_wrong_lut(tmp_path, monkeypatch):
    """The check above fails with the plain adder's LUT (the gate ignored)."""
    monkeypatch.setattr(gated_add, "CCU2C_INIT", 0x96AA)
    bad = _icarus_check(tmp_path, 9, seed=3)
    assert bad and all(g == 1 for _, _, g, _, _ in bad)


def test_ecp5_netlist_is_a_carry_chain_without_luts():
    il = rtlil.convert(GatedAdder(width=32), platform=_ECP5())
    cells = re.findall(r"cell \\CCU2C ", il)
    assert len(cells) == 16
    assert "$mux" not in il and "$add" not in il
    plain = rtlil.convert(GatedAdder(width=32))
    assert "CCU2C" not in plain and "$add" in plain


def test_pe_array_uses_the_chain():
    """The accumulators and index 0 of every adder-tree level are gated adders: one CCU2C per
    two bits of each; so is position 0 of every level of the stacking tree."""
    cfg = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
    il = rtlil.convert(PEArray(cfg), platform=_ECP5())
    half = lambda w: -(-w // 2)
    dw2, ltp = 2 * cfg.data_width, 2
    want = (cfg.lanes * half(cfg.acc_width)
            + cfg.tc * sum(half(dw2 + lvl) for lvl in range(1, ltp + 1)))
    assert len(re.findall(r"cell \\CCU2C ", il)) == want
    tree = rtlil.convert(StackTree(n=8, width=20), platform=_ECP5())
    assert len(re.findall(r"cell \\CCU2C ", tree)) == 3 * half(20)


def test_bad_width_is_rejected():
    with pytest.raises(ValueError, match="width = 0"):
        GatedAdder(width=0)
    with pytest.raises(ValueError, match="width = True"):
        GatedAdder(width=True)
