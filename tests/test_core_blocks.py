"""Small pieces of the core, in the Amaranth simulator."""
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.core import _ahead
from fluidnpu.hw.layout import gemm_image
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.runner import MemTiming
from fluidnpu.sim.cycle_model import layer_cycles

sys.path.insert(0, str(Path(__file__).parent))
from configs import RESIDENT  # noqa: E402
from core_amaranth_sim import run_core, run_core_layers  # noqa: E402


def test_load_counter_compare_survives_wraparound():
    done, use = Signal(4), Signal(4)
    m = Module()
    out = Signal()
    m.d.comb += out.eq(_ahead(done, use))
    got = {}

    async def tb(ctx):
        for d in range(16):
            for u in range(16):
                ctx.set(done, d)
                ctx.set(use, u)
                got[d, u] = ctx.get(out)

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    for (d, u), v in got.items():
        diff = (d - u) % 16
        assert v == (1 <= diff < 8), (d, u)
    assert got[1, 15] and not got[15, 1]      # 17 > 15 although 1 < 15


SMALL = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)


@pytest.mark.parametrize("shape, bp, k, bias, requant", [
    ((1, 4, 4), 1, 1, False, False),
    ((9, 13, 6), 2, 1, True, True),
    ((3, 300, 5), 1, 4, True, False),       # three reduction chunks
    ((10, 20, 10), 4, 2, False, True),
    # three column tiles of one row tile: the next tile's bias lands while this tile's
    # groups still leave the array (a bias written into both weight slots shows)
    ((16, 20, 12), 2, 1, True, True),
    # groups of three cycles with four rows each (P = 3, one element per segment and
    # cycle): the compute issue spaces the group ends by four cycles so that the row
    # stage's shadow has written a group's rows before the next one's sums come
    ((12, 3, 7), 4, 1, True, True),
])
def test_core_in_amaranth_simulator(shape, bp, k, bias, requant):
    """The whole core on the Python simulator: a fast check independent of cocotb."""
    rng = np.random.default_rng(sum(shape) + bp + k)
    R, P, C = shape
    x = rng.integers(-128, 128, (R, P))
    w = rng.integers(-128, 128, (P, C))
    b = rng.integers(-5000, 5000, C) if bias else None
    om, mult, shift = (1, 300, 9) if requant else (0, 1, 0)
    model = layer_cycles(SMALL, R, P, C, bp=bp, k=k, bias=bias, out_mode=om, mem=MemTiming(latency=3))
    # a core that hangs fails at twice the cycle model's count, not after 200000 cycles
    out, cycles, img, mem = run_core(SMALL, x, w, b, bp=bp, k=k, out_mode=om, mult=mult, shift=shift,
                                     max_cycles=2 * model + 200)
    ref = gemm_reference(SMALL, x, w, b, out_mode=om, mult=mult, shift=shift)
    assert np.array_equal(out, ref)
    assert img.untouched_violations(mem) == []
    assert cycles >= -(-R * P * C // SMALL.lanes)


def _nonzero(rng, shape):
    v = rng.integers(1, 128, shape)
    return np.where(rng.random(shape) < 0.5, -v, v)


@pytest.mark.parametrize("P2, bp, k", [(5, 1, 1), (3, 2, 1), (6, 1, 2), (2, 4, 1), (1, 1, 4)])
def test_masked_lanes_after_a_layer_that_fills_the_buffers(P2, bp, k):
    """A layer whose reduction leaves lanes empty, run after one that wrote non-zero X and
    W into every lane of both slots: the empty lanes hold the first layer's operands, so
    only the lane mask keeps them out of the sums. (Alone in a fresh simulation those
    lanes read zeroed memory and a mask bug does not show.)"""
    rng = np.random.default_rng(P2 * 10 + bp + k)
    n = SMALL.lanes
    x1, w1 = _nonzero(rng, (8, 4 * n)), _nonzero(rng, (4 * n, 8))       # two chunks per slot
    x2, w2 = _nonzero(rng, (7, P2)), _nonzero(rng, (P2, 6))
    runs, mem = run_core_layers(SMALL, [dict(x=x1, w=w1), dict(x=x2, w=w2, bp=bp, k=k)])
    (o1, _, img1), (o2, c2, img2) = runs
    assert np.array_equal(o1, gemm_reference(SMALL, x1, w1))
    assert np.array_equal(o2, gemm_reference(SMALL, x2, w2))
    # neither layer wrote outside its own output
    b2 = len(img1.mem)
    assert img1.untouched_violations(mem[:b2]) == []
    assert img2.untouched_violations(np.concatenate([img2.mem[:b2], mem[b2:]])) == []
    # the second layer takes what it takes alone (the cycle model's count, from idle)
    assert c2 == run_core(SMALL, x2, w2, bp=bp, k=k)[1]


@pytest.mark.parametrize("rs, n, P, bp, k", [
    (3, 5, 13, 1, 1),      # samples straddle the 8-row tiles
    (1, 11, 20, 2, 1),     # one row per sample (dense layers)
    (8, 2, 9, 1, 2),       # a sample is exactly a row tile
    (5, 4, 300, 1, 4),     # several reduction chunks: every X load re-walks its tile
    (3, 7, 13, 1, 4),      # six column tiles: the next row tile's X in parts of 4 rows,
                           # samples straddling the parts (hw/loader.py)
    (2, 9, 20, 1, 4),      # parts of 2 rows, three of them ending on a sample's last row
    (1, 9, 3, 1, 1),       # one-beat rows, a sample each: the gather index moves every
                           # request (the loader's registered ``rq_g_idx`` set one ahead)
])
def test_core_x_row_gather(rs, n, P, bp, k):
    """With ``rs > 0`` sample j's rows come from the gather table's address j: scatter the
    samples in shuffled order, wipe the dense X, and the result must still match, in the
    same number of cycles as the dense layer."""
    _gather_case(SMALL, rs, n, P, bp, k)


def test_core_x_row_gather_resident_x():
    """The gather with X resident (HwConfig.x_resident): P = 100 at k = 1 runs in two
    chunks of 64 and 36 with X loaded at the first of two column tiles, each chunk's load
    walking the row tile's samples again; 21 rows in row tiles of 8 and 13."""
    assert RESIDENT.x_resident(100, 1) and RESIDENT.tile_rows(100, 1) == 16
    _gather_case(RESIDENT, 3, 7, 100, 1, 1)


def _gather_case(cfg, rs, n, P, bp, k):
    import dataclasses
    rng = np.random.default_rng(rs * 100 + n)
    R, C = rs * n, 6
    x = rng.integers(-128, 128, (R, P))
    w = rng.integers(-128, 128, (P, C))
    img = gemm_image(cfg, x, w, None)
    ref = gemm_reference(cfg, x, w)
    dense, dense_cycles, _, _ = run_core(cfg, x, w, bp=bp, k=k, img=img)
    assert np.array_equal(dense, ref)
    blk = rs * img.x_stride
    base = -(-img.size // 64) * 64
    order = rng.permutation(n)
    mem = np.concatenate([img.mem, np.zeros(base - img.size + n * blk + 64, np.uint8)])
    table = []
    for j in range(n):
        a = base + int(order[j]) * blk
        src = img.x_addr + j * blk
        mem[a:a + blk] = img.mem[src:src + blk]
        table.append(a)
    mem[img.x_addr:img.x_addr + R * img.x_stride] = 0
    out, cycles, _, _ = run_core(cfg, x, w, bp=bp, k=k, img=dataclasses.replace(img, mem=mem),
                                 gather=table, rs=rs)
    assert np.array_equal(out, ref)
    assert cycles == dense_cycles


#: 16-bit data on an 8-byte port: two bias words per beat, so a column tile of an odd
#: number of columns ends half-way into its last bias beat
WIDE_PORT = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=8, data_width=16)


@pytest.mark.parametrize("shape, bp, k", [((5, 21, 7), 2, 1), ((3, 9, 5), 1, 4)])
def test_core_bias_beats_on_a_wide_port(shape, bp, k):
    """Bias loads of two words per beat: the beat count of a tile (rounded up) and the word
    of the beat each unit takes (with k = tc a tile is one column and may start half-way
    into a beat)."""
    rng = np.random.default_rng(sum(shape) * 7 + k)
    R, P, C = shape
    x = rng.integers(-3000, 3000, (R, P))
    w = rng.integers(-3000, 3000, (P, C))
    b = rng.integers(-(1 << 24), 1 << 24, C)
    model = layer_cycles(WIDE_PORT, R, P, C, bp=bp, k=k, bias=True, out_mode=0, mem=MemTiming(latency=3))
    out, cycles, img, mem = run_core(WIDE_PORT, x, w, b, bp=bp, k=k,     # raw int32: every bias bit shows
                                     max_cycles=2 * model + 200)
    ref = gemm_reference(WIDE_PORT, x, w, b)
    assert np.array_equal(out, ref)
    assert img.untouched_violations(mem) == []
    # the beats read: one too many shows as a cycle more (this harness counts to the cycle
    # busy falls, one short of the cocotb bench the cycle model equals)
    assert cycles + 1 == model
