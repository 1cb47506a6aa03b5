"""The operand buffers' word-wide memories: the write invariant they rely on, and the core
(copy network, replication select, lane mask) bit-exact on the Amaranth simulator for
configurations whose network has one, two and three levels."""
import itertools

import numpy as np
import pytest

from fluidnpu.hw.buffers import OperandBuffers, mem_shape, net_stages, w_stages
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.reference import gemm_reference

from core_amaranth_sim import run_core


def _log2(v):
    return v.bit_length() - 1


def _beat_targets(cfg, kind, bp, k, pl0, idx, abase=0, wide=False):
    """(memory, line, position) of each element of a beat, as the loader maps it
    (docs/architecture.md, "Buffers"; hw/loader.py, stage r1), slot 0; with ``wide``, W
    lines and positions are those of the memory's words (``w_word_lines`` lines each)."""
    tc, tp, E = cfg.tc, cfg.tp, cfg.elems_per_beat
    seg = tp // bp
    S, F = k * seg, tc // k
    out = []
    for pl in range(pl0, pl0 + E):
        s, q = divmod(pl, S)
        j, lo = divmod(q, seg)
        if kind == "x":
            a = abase + s
            bank = (a % F) * k * tp + j * tp + (idx % bp) * seg + lo
            line = a // F
        else:
            bank = (idx * k + j) * tp + (s % bp) * seg + lo
            line = s // bp
            if wide:
                wl = cfg.w_word_lines
                out.append((bank // tp, line // wl, (line % wl) * tp + bank % tp))
                continue
        out.append((bank // tp, line, bank % tp))
    return out


@pytest.mark.parametrize("tc, tp, mem_bytes, dw", [
    (4, 4, 4, 8), (8, 8, 8, 8), (16, 8, 8, 8), (8, 4, 4, 8), (4, 16, 4, 8), (2, 4, 4, 16),
    (16, 16, 16, 8),
    # beats wider than a PE's lanes: W words of w_word_lines = 2 and 4 lines
    (4, 2, 4, 8), (16, 8, 16, 8), (8, 4, 8, 8), (8, 2, 8, 8), (4, 2, 8, 16),
])
def test_one_line_per_memory_per_beat(tc, tp, mem_bytes, dw):
    """Every element of a beat that lands in one memory lands on the same line (for W: the
    same word of ``w_word_lines`` lines), at its own position: the property that lets a
    memory take a beat as one word write; and the beat's elements land on element 0's line
    or the one after it, so the loader sends one line and a bit per element
    (``buffers.write_beat_layout``)."""
    cfg = HwConfig(tc=tc, tp=tp, mem_bytes=mem_bytes, data_width=dw)
    E = cfg.elems_per_beat
    for (bp, k), kind in itertools.product(cfg.policies, ("x", "w")):
        S = k * tp // bp
        for pl0 in range(0, 4 * max(S, E), E):
            for idx in range(min(2 * bp, tc if kind == "w" else 64)):
                if kind == "w" and idx >= tc // k:
                    continue
                for abase in (0, 3, 7):
                    tg = _beat_targets(cfg, kind, bp, k, pl0, idx, abase)
                    line0, wl = tg[0][1], cfg.w_word_lines
                    if kind == "x" or wl == 1:      # line0 or the next: a bit per element
                        assert all(line - line0 in (0, 1) for _, line, _ in tg), (kind, bp, k, pl0, tg)
                    else:                           # line0's word: the line's low bits
                        assert all(line // wl == line0 // wl for _, line, _ in tg), (bp, k, pl0, tg)
                    # the words the memories take: X words are lines; W words w_word_lines lines
                    tw = _beat_targets(cfg, kind, bp, k, pl0, idx, abase, wide=True)
                    npos = tp if kind == "x" else mem_shape(cfg, "w")[1]
                    lines, pos = {}, set()
                    for mem, line, p in tw:
                        assert 0 <= p < npos, (kind, bp, k, pl0, idx, tw)
                        assert lines.setdefault(mem, line) == line, (kind, bp, k, pl0, idx, tw)
                        assert (mem, p) not in pos, (kind, bp, k, pl0, idx, tw)
                        pos.add((mem, p))


def test_invariant_check_can_fail():
    """The check above fails on a mapping that puts two lines in one memory."""
    cfg = HwConfig(tc=4, tp=4, mem_bytes=4)
    tg = _beat_targets(cfg, "x", 1, 1, 0, 0)
    assert len({m for m, _, _ in tg}) == 1       # one memory, one line: fine
    bad = [(0, 0, 0), (0, 1, 1)]
    lines = {}
    assert any(lines.setdefault(m, l) != l for m, l, _ in bad)


def test_latency_follows_the_network():
    assert [net_stages(HwConfig(tc=tc, tp=4, mem_bytes=4)) for tc in (4, 8, 16, 32)] == [1, 2, 2, 3]
    assert OperandBuffers.latency_for(HwConfig(tc=8, tp=8, mem_bytes=8)) == 5
    # the W replication network: log2(tp) levels, two per stage, within the X network's stages
    assert [w_stages(HwConfig(tc=tc, tp=tp, mem_bytes=4)) for tc, tp in
            ((4, 4), (8, 4), (8, 8), (4, 8), (4, 16), (16, 16), (16, 4))] == [1, 1, 2, 1, 1, 2, 1]
    # a wide W word's line select adds levels: 16 x 8 with 16-byte beats, 3 + 1 levels in its
    # two stages; 8 x 2 with 8-byte beats, 1 + 2 levels in two stages; 4 x 2, 1 + 1 in one
    assert [w_stages(HwConfig(tc=tc, tp=tp, mem_bytes=mb)) for tc, tp, mb in
            ((16, 8, 16), (8, 2, 8), (4, 2, 4))] == [2, 2, 1]


_SMALL = dict(tr=8, x_buf_elems=2048, w_buf_elems=1024)


@pytest.mark.parametrize("tc, tp, mem_bytes, shape, seed, policies", [
    # network of three levels in two stages: k = 1 (every level moves words), k = 2, k = tc
    (8, 4, 4, (11, 45, 13), 1, ((1, 1), (2, 2), (4, 8))),
    # four levels in two stages; B_P = tp with k = 4 (levels 2 and 3 only)
    (16, 4, 4, (5, 70, 37), 2, ((1, 1), (4, 4), (2, 16))),
    # wide words (8 elements), two chunks at k = 1
    (4, 8, 4, (9, 200, 6), 3, ((1, 1), (8, 4), (2, 2))),
    # the W network in two stages (tp = 8: levels 0-1, then 2), B_P > 1 over many steps, so
    # the segment block (wgrp) changes from one request to the next
    (8, 8, 8, (6, 150, 17), 4, ((2, 1), (4, 2), (8, 1))),
    # X beats on two memory lines: at (4, 1) a beat spans E/S = 4 virtual lines, and row
    # group 1 of a tile starts at g * n_s = 75, not a multiple of E/S, so some beats' first
    # elements land on one memory line and the rest on the next (write_beat_layout)
    (8, 8, 8, (11, 150, 5), 5, ((4, 1),)),
    # beats wider than a PE's lanes: W words of two lines (4 x 2) and four lines (8 x 2,
    # the line select over two stages), a W load's beat on one PE at k = 1
    (4, 2, 4, (9, 45, 7), 6, ((1, 1), (2, 1), (1, 4), (2, 2))),
    (8, 2, 8, (7, 70, 11), 7, ((1, 1), (2, 2), (1, 8))),
])
def test_core_policies_on_other_shapes(tc, tp, mem_bytes, shape, seed, policies):
    """The whole core on the Amaranth simulator (the cycle model's equality with the RTL on
    these networks is tests/test_cycle_model.py's, on Verilator)."""
    cfg = HwConfig(tc=tc, tp=tp, mem_bytes=mem_bytes, **_SMALL)
    rng = np.random.default_rng(seed)
    R, P, C = shape
    x = rng.integers(-128, 128, (R, P))
    w = rng.integers(-128, 128, (P, C))
    b = rng.integers(-3000, 3000, C)
    ref = gemm_reference(cfg, x, w, b)
    for bp, k in policies:
        out, _, img, mem = run_core(cfg, x, w, b, bp=bp, k=k)
        assert np.array_equal(out, ref), (bp, k)
        assert img.untouched_violations(mem) == []
