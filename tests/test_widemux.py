"""The wide multiplexer ``o = i[sel]``: behaviour on the Amaranth simulator, and the ECP5
slice cells it becomes (LUT4, PFUMX, L6MUX21) simulated with yosys' own cell models under
Icarus Verilog, both against numpy; the operand buffers' write selects use it."""
import re

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.sim import Simulator

from fluidnpu.hw import widemux
from fluidnpu.hw.buffers import OperandBuffers
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.widemux import WideMux

from ecp5_cells import needs_cells, run_vectors


class _ECP5:
    """Stands in for an amaranth-boards ECP5 platform: the multiplexer looks only at this."""
    family = "ecp5"


def _vectors(n, width, count, seed):
    rng = np.random.default_rng(seed)
    ins = rng.integers(0, 1 << width, (count, n)).tolist()
    sel = rng.integers(0, n, count).tolist()
    return ins, sel, [row[s] for row, s in zip(ins, sel)]


@pytest.mark.parametrize("n, width", [(2, 3), (4, 8), (8, 8)])
def test_behaviour(n, width):
    ins, sel, want = _vectors(n, width, 200, n)
    dut = WideMux(n=n, width=width)
    got = []

    async def tb(ctx):
        for row, s in zip(ins, sel):
            for k, v in enumerate(row):
                ctx.set(dut.i[k], v)
            ctx.set(dut.sel, s)
            got.append(ctx.get(dut.o))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert got == want


def _icarus_check(tmp_path, n, width, seed):
    ins, sel, want = _vectors(n, width, 300, seed)
    v = verilog.convert(WideMux(n=n, width=width), platform=_ECP5(), name="dut")
    lsel = (n - 1).bit_length()
    # the view's port is one vector, element k in bits k*width ..
    vecs = [(sum(x << (k * width) for k, x in enumerate(row)) << lsel) | s
            for row, s in zip(ins, sel)]
    got = run_vectors(tmp_path, v, ("LUT4", "PFUMX", "L6MUX21"),
                      [("i", n * width), ("sel", lsel)], ("o", width), vecs)
    return [(row, s, g, w) for row, s, g, w in zip(ins, sel, got, want) if g != w]


@needs_cells
@pytest.mark.parametrize("n", [4, 8])
def test_ecp5_cells_match_yosys_models(tmp_path, n):
    assert _icarus_check(tmp_path, n, 8, seed=n) == []


@needs_cells
def test_ecp5_check_catches_a_wrong_lut(tmp_path, monkeypatch):
    """The check above fails with the LUTs' inputs swapped (sel[0] picks the other one)."""
    monkeypatch.setattr(widemux, "LUT_MUX2_INIT", 0xACAC)
    assert _icarus_check(tmp_path, 8, 8, seed=1)


def test_ecp5_netlist_uses_the_slice_muxes():
    il = rtlil.convert(WideMux(n=8, width=8), platform=_ECP5())
    assert len(re.findall(r"cell \\LUT4 ", il)) == 32
    assert len(re.findall(r"cell \\PFUMX ", il)) == 16
    assert len(re.findall(r"cell \\L6MUX21 ", il)) == 8
    assert "LUT4" not in rtlil.convert(WideMux(n=8, width=8))


def test_operand_buffers_write_selects_use_it():
    """One eight-way select per memory, position and element bit on the 8 x 8."""
    cfg = HwConfig(tc=8, tp=8, tr=8, x_buf_elems=4096, w_buf_elems=1024)
    il = rtlil.convert(OperandBuffers(cfg), platform=_ECP5())
    assert len(re.findall(r"cell \\L6MUX21 ", il)) == cfg.tc * cfg.tp * cfg.data_width


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n = 3"):
        WideMux(n=3, width=8)
    with pytest.raises(ValueError, match="width = 0"):
        WideMux(n=4, width=0)
