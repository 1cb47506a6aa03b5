"""The registered multiplier: behaviour in simulation, and the ECP5 block it becomes."""
import re

import numpy as np
import pytest
from amaranth.back import rtlil
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
