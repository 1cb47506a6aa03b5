"""The tiled traffic (fluidnpu.sim.traffic) against the compulsory one, by hand. The RTL
check (the bench's read and write counts equal ``tiled_traffic`` on every random layer) is in
tests/test_cycle_model.py."""
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.layout import compulsory_traffic
from fluidnpu.metrics import gemm_metrics
from fluidnpu.sim.cycle_model import CycleModelError
from fluidnpu.sim.traffic import tiled_traffic

#: the 4 x 4 (the default until 4 Dec 2026), mem_bytes 4, tr 32, chunk_max(1) = 2048 at 32 rows
CFG = HwConfig(tc=4, tp=4, mem_bytes=4, x_buf_elems=65536, w_buf_elems=16384)


def test_single_step_moves_the_compulsory_bytes():
    """One row tile, one column tile, one chunk: every operand once."""
    R, P, C = 20, 300, 4
    t = tiled_traffic(CFG, R, P, C, bp=1, k=1, bias=True, out_mode=OUT_RAW)
    rd, wr = compulsory_traffic(CFG, R, P, C, True, OUT_RAW)
    assert (t.read_beats * CFG.mem_bytes, t.write_beats * CFG.mem_bytes) == (rd, wr)


def test_chunks_refetch_x_per_column_tile_and_w_per_row_tile():
    # P = 9216 at k = 1: X holds 8192 at 8 rows at most, W 4096, so 32-row tiles and
    # chunks of 2048 (four) and 1024, X chunked too
    R, P, C = 64, 9216, 64             # 2 row tiles, 16 column tiles, 5 chunks
    assert CFG.tile_rows(P, 1) == 32 and not CFG.x_resident(P, 1)
    t = tiled_traffic(CFG, R, P, C, bp=1, k=1, bias=False, out_mode=OUT_REQUANT)
    xb = R * P // 4                    # one pass over X, in beats
    wb = C * P // 4
    assert t.read_beats == 16 * xb + 2 * wb
    assert t.write_beats == R * 16      # each row of each 4-column tile: one beat
    # one chunk (P within chunk_max at 32 rows): X once, W once per row tile
    t1 = tiled_traffic(CFG, R, 2048, C, bp=1, k=1, bias=False, out_mode=OUT_REQUANT)
    assert t1.read_beats == R * 512 + 2 * C * 512


def test_resident_x_loads_once_with_chunked_w():
    """P = 4608 at k = 1: W holds 4096 (chunks of 2048 and 2560), X holds all of P at 8
    rows, so X moves once and W once per 8-row tile (8 row tiles of R = 64)."""
    R, P, C = 64, 4608, 64
    assert CFG.tile_rows(P, 1) == 8 and CFG.x_resident(P, 1)
    assert CFG.chunk_sizes(P, 1, 8) == (2048, 2560)
    t = tiled_traffic(CFG, R, P, C, bp=1, k=1, bias=False, out_mode=OUT_REQUANT)
    assert t.read_beats == R * P // 4 + 8 * C * P // 4


def test_tall_row_tiles_load_x_once():
    """P = 2304 at k = 1: 16-row tiles hold all of P, so X moves once and W once per
    16 rows (4 row tiles of R = 64), instead of X once per column tile."""
    R, P, C = 64, 2304, 64
    assert CFG.tile_rows(P, 1) == 16
    t = tiled_traffic(CFG, R, P, C, bp=1, k=1, bias=False, out_mode=OUT_REQUANT)
    assert t.read_beats == R * P // 4 + 4 * C * P // 4
    # at k = 4 W holds 16384 elements of each column: the rows are set by X alone
    assert CFG.tile_rows(P, 4) == 16


def test_narrow_column_tiles_write_whole_beats():
    """k = tc: one column per tile, so every output element takes a raw beat of its own."""
    t = tiled_traffic(CFG, 8, 16, 8, bp=1, k=4, bias=False, out_mode=OUT_RAW)
    assert t.write_beats == 8 * 8
    assert t.write_beats * 4 == compulsory_traffic(CFG, 8, 16, 8, False, OUT_RAW)[1]
    t = tiled_traffic(CFG, 8, 16, 8, bp=1, k=4, bias=False, out_mode=OUT_REQUANT)
    assert t.write_beats == 8 * 8       # 1 byte used of each 4-byte beat
    assert t.write_beats * 4 > compulsory_traffic(CFG, 8, 16, 8, False, OUT_REQUANT)[1]


def test_metrics_report_both_rooflines():
    # chunked at k = 1, X too: X read 16 times, 16 * 64 * 9216 / 4 beats > the compute
    m = gemm_metrics(CFG, 64, 9216, 64, 1_000_000, bias=False, requant=True)
    assert m["roofline_cycles_tiled"] > m["roofline_cycles"]
    assert m["bound_tiled"] == "memory"
    m = gemm_metrics(CFG, 64, 256, 64, 1_000_000, bias=False, requant=True)
    assert m["bound_tiled"] == "compute" and m["roofline_cycles_tiled"] == 64 * 256 * 64 // 16
    # tall tiles keep the deep layer compute-bound: 184,320 beats < 589,824 MAC cycles
    m = gemm_metrics(CFG, 64, 2304, 64, 1_000_000, bias=False, requant=True)
    assert m["bound_tiled"] == "compute" and m["roofline_cycles_tiled"] == 64 * 2304 * 64 // 16


def test_bad_policy_is_refused():
    with pytest.raises(CycleModelError, match="k = 3"):
        tiled_traffic(CFG, 8, 8, 8, bp=1, k=3, bias=False)


def test_no_layer_beats_its_rooflines():
    """Both rooflines are lower bounds on the cycle model (so on the RTL, which it equals
    cycle for cycle): the channels overlap, so adding read and write beats, as the
    rooflines did until 3 Dec 2026, put write-heavy layers at efficiency up to 1.29."""
    import random
    from fluidnpu.sim.cycle_model import layer_cycles
    rnd = random.Random(5)
    cfg = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
    # write-heavy shapes first (short P, wide C, raw out), then random ones
    shapes = [(64, 1, 64), (49, 9, 32), (100, 3, 16)]
    shapes += [(rnd.randint(1, 70), rnd.randint(1, 300), rnd.randint(1, 40)) for _ in range(40)]
    worst = 0.0
    for R, P, C in shapes:
        for bp, k in ((1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2)):
            for out_mode in (OUT_RAW, OUT_REQUANT):
                cyc = layer_cycles(cfg, R, P, C, bp=bp, k=k, bias=True, out_mode=out_mode)
                m = gemm_metrics(cfg, R, P, C, cyc, bias=True, requant=out_mode == OUT_REQUANT,
                                 bp=bp, k=k)
                assert m["roofline_cycles"] <= m["roofline_cycles_tiled"] <= cyc, (R, P, C, bp, k)
                worst = max(worst, m["roofline_efficiency"])
    assert worst > 0.5          # the shapes include some that come near their bound
