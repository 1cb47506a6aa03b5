"""Host memory layout and descriptor packing (fluidnpu.hw.layout)."""
from __future__ import annotations

import numpy as np
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT, layer_desc_layout
from fluidnpu.hw.layout import (DescError, compulsory_bytes, compulsory_traffic, desc_fields,
                                gemm_image, pack_desc, roundup, unpack_desc)
from fluidnpu.hw.reference import gemm_reference

CFGS = {
    "default": HwConfig(),
    "small": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4),
    "8x8": HwConfig(tc=8, tp=8, mem_bytes=8),
    "wide16": HwConfig(tc=8, tp=8, data_width=12, acc_width=32, mem_bytes=16),
    "m64": HwConfig(tc=64, tp=64, tr=16, x_buf_elems=65536, w_buf_elems=8192, mem_bytes=64),
}


def _rand(cfg, shape, rng):
    return rng.integers(cfg.data_min, cfg.data_max + 1, size=shape)


@pytest.mark.parametrize("name", list(CFGS))
@pytest.mark.parametrize("out_mode", [OUT_RAW, OUT_REQUANT])
@pytest.mark.parametrize("with_bias", [False, True])
def test_image_layout_round_trip(name, out_mode, with_bias):
    cfg = CFGS[name]
    M, eb = cfg.mem_bytes, cfg.elem_bytes
    rng = np.random.default_rng(7)
    R, P, C = 5, 13, 7
    x, w = _rand(cfg, (R, P), rng), _rand(cfg, (P, C), rng)
    bias = rng.integers(-(1 << 31), 1 << 31, size=C) if with_bias else None
    im = gemm_image(cfg, x, w, bias, out_mode=out_mode, base=3, gap=5, seed=11)
    # alignment and strides
    for a in (im.x_addr, im.w_addr, im.b_addr, im.o_addr, im.x_stride, im.w_stride, im.o_stride):
        assert a % M == 0
    assert im.x_addr == roundup(3, M)
    assert im.x_stride == im.w_stride == roundup(P * eb, M)
    assert im.ob == (4 if out_mode == OUT_RAW else eb)
    assert im.o_stride == roundup(C * im.ob, M)
    assert im.size % M == 0 and im.mem.dtype == np.uint8
    # regions are disjoint and in order X < W < bias < O
    regions = [(im.x_addr, R * im.x_stride), (im.w_addr, C * im.w_stride)]
    if with_bias:
        regions.append((im.b_addr, 4 * C))
    regions.append((im.o_addr, R * im.o_stride))
    for (a0, n0), (a1, _) in zip(regions, regions[1:]):
        assert a0 + n0 + roundup(5, M) <= a1
    assert regions[-1][0] + regions[-1][1] <= im.size
    # element formulas of docs/architecture.md
    dt = "<i1" if eb == 1 else "<i2"
    mem = im.mem
    for r in range(R):
        for p in range(P):
            a = im.x_addr + r * im.x_stride + p * eb
            assert int(mem[a:a + eb].view(dt)[0]) == x[r, p]
    for p in range(P):
        for c in range(C):
            a = im.w_addr + c * im.w_stride + p * eb
            assert int(mem[a:a + eb].view(dt)[0]) == w[p, c]
    if with_bias:
        got = mem[im.b_addr:im.b_addr + 4 * C].view("<i4")
        assert (got == bias).all()
    # O round trip through write_out / read_out, sign-extended
    lo, hi = (-(1 << 31), (1 << 31) - 1) if out_mode == OUT_RAW else (cfg.data_min, cfg.data_max)
    vals = rng.integers(lo, hi + 1, size=(R, C))
    vals[0, 0], vals[-1, -1] = lo, hi
    m2 = mem.copy()
    im.write_out(m2, vals)
    assert (im.read_out(m2) == vals).all()
    assert im.untouched_violations(m2) == []
    # only O's element bytes changed
    changed = np.flatnonzero(m2 != mem)
    assert im.out_mask()[changed].all()
    assert im.out_mask().sum() == R * C * im.ob


def test_padding_is_garbage_and_untouched():
    cfg = CFGS["default"]
    rng = np.random.default_rng(1)
    R, P, C = 3, 5, 3                      # P*eb = 5 -> 3 padding bytes per row (M = 8)
    x, w = _rand(cfg, (R, P), rng), _rand(cfg, (P, C), rng)
    im = gemm_image(cfg, x, w, out_mode=OUT_REQUANT, seed=3)
    ref = np.random.default_rng(3).integers(0, 256, size=im.size, dtype=np.uint8)
    pad = [im.x_addr + r * im.x_stride + b for r in range(R) for b in range(P, im.x_stride)]
    pad += [im.w_addr + c * im.w_stride + b for c in range(C) for b in range(P, im.w_stride)]
    pad += [im.o_addr + r * im.o_stride + b for r in range(R) for b in range(C, im.o_stride)]
    assert (im.mem[pad] == ref[pad]).all(), "padding must keep the seeded garbage"
    assert np.count_nonzero(im.mem[pad]) > len(pad) // 2, "padding garbage should be non-zero"
    # the same seed gives the same image; another seed changes only non-element bytes
    im2 = gemm_image(cfg, x, w, out_mode=OUT_REQUANT, seed=3)
    assert (im2.mem == im.mem).all()
    im3 = gemm_image(cfg, x, w, out_mode=OUT_REQUANT, seed=4)
    assert (im3.mem[pad] != im.mem[pad]).any()
    # a write into O's row padding is reported
    m = im.mem.copy()
    im.write_out(m, gemm_reference(cfg, x, w, out_mode=OUT_REQUANT))
    assert im.untouched_violations(m) == []
    m[im.o_addr + im.o_stride - 1] ^= 0xFF
    assert im.untouched_violations(m) == [im.o_addr + im.o_stride - 1]


def test_read_out_sign_extension_raw_and_requant():
    cfg = HwConfig(data_width=12, acc_width=24)
    x = np.array([[cfg.data_min, cfg.data_max]])
    w = np.array([[1], [1]])
    for mode, ob in ((OUT_RAW, 4), (OUT_REQUANT, 2)):
        im = gemm_image(cfg, x, w, out_mode=mode)
        m = im.mem.copy()
        o = im.o_addr
        m[o:o + ob] = 0xFF                                 # -1
        assert im.read_out(m)[0, 0] == -1
        m[o:o + ob] = 0
        m[o + ob - 1] = 0x80                               # most negative
        assert im.read_out(m)[0, 0] == -(1 << (8 * ob - 1))


def test_desc_pack_unpack_round_trip():
    for cfg in CFGS.values():
        layout = layer_desc_layout(cfg)
        rng = np.random.default_rng(cfg.tc)
        for _ in range(50):
            f = {
                "r": int(rng.integers(1, 1 << cfg.dim_width)),
                "p": int(rng.integers(1, 1 << cfg.dim_width)),
                "c": int(rng.integers(1, 1 << cfg.dim_width)),
                **{n: int(rng.integers(0, (1 << cfg.addr_width) // cfg.mem_bytes)) * cfg.mem_bytes
                   for n in ("x_addr", "w_addr", "b_addr", "o_addr")},
                **desc_fields(bp=int(rng.choice(cfg.bp_choices)), k=int(rng.choice(cfg.k_choices)),
                              cfg=cfg),
                "bias_en": int(rng.integers(0, 2)), "out_mode": int(rng.integers(0, 2)),
                "relu": int(rng.integers(0, 2)),
                "mult": int(rng.integers(-(1 << (cfg.mult_width - 1)), 1 << (cfg.mult_width - 1))),
                "shift": int(rng.integers(0, 64)),
                "rs": int(rng.integers(0, 1 << cfg.dim_width)),
            }
            v = pack_desc(cfg, **f)
            assert 0 <= v < (1 << layout.size)
            assert unpack_desc(cfg, v) == f
            # independently through the Amaranth layout view
            view = layout.from_bits(v)
            assert {n: int(view[n]) for n, _ in layout} == f
        # each field sits at its own offset: one field set alone gives value << offset
        for name, field in layout:
            if name in ("r", "p", "c"):
                continue
            one = {"x_addr": cfg.mem_bytes, "w_addr": cfg.mem_bytes, "b_addr": cfg.mem_bytes,
                   "o_addr": cfg.mem_bytes}.get(name, 1)
            base = dict(r=1, p=1, c=1, mult=0)
            v0 = pack_desc(cfg, **base)
            v1 = pack_desc(cfg, **{**base, name: one})
            assert v1 - v0 == one << field.offset, name


def test_desc_defaults_and_image_desc():
    cfg = CFGS["default"]
    d = unpack_desc(cfg, pack_desc(cfg, r=1, p=2, c=3))
    assert d["mult"] == 1 and d["shift"] == 0 and d["log2_bp"] == 0
    x = np.ones((2, 3), dtype=np.int8)
    w = np.ones((3, 4), dtype=np.int8)
    im = gemm_image(cfg, x, w, np.zeros(4, dtype=np.int32), out_mode=OUT_REQUANT)
    f = unpack_desc(cfg, im.desc(mult=-7, shift=5, relu=True, bp=4, k=2))
    assert f == {"r": 2, "p": 3, "c": 4, "x_addr": im.x_addr, "w_addr": im.w_addr,
                 "b_addr": im.b_addr, "o_addr": im.o_addr, "log2_bp": 2, "log2_k": 1,
                 "bias_en": 1, "out_mode": OUT_REQUANT, "relu": 1, "mult": -7, "shift": 5, "rs": 0}


@pytest.mark.parametrize("fields, needle", [
    ({"r": 0, "p": 1, "c": 1}, "r = 0"),
    ({"r": 1 << 16, "p": 1, "c": 1}, "r = 65536"),
    ({"r": 1, "p": 1, "c": 1, "x_addr": 10}, "x_addr = 0xa"),
    ({"r": 1, "p": 1, "c": 1, "o_addr": 1 << 32}, "o_addr = 4294967296"),
    ({"r": 1, "p": 1, "c": 1, "mult": 1 << 15}, "mult = 32768"),
    ({"r": 1, "p": 1, "c": 1, "mult": -(1 << 15) - 1}, "mult = -32769"),
    ({"r": 1, "p": 1, "c": 1, "shift": 64}, "shift = 64"),
    ({"r": 1, "p": 1, "c": 1, "relu": 2}, "relu = 2"),
    ({"r": 1, "p": 1, "c": 1, "bogus": 1}, "bogus"),
    ({"r": 1, "p": 1, "c": 1, "mult": 1.5}, "mult = 1.5"),
])
def test_desc_validation(fields, needle):
    with pytest.raises(DescError, match=needle.replace("(", r"\(")):
        pack_desc(CFGS["default"], **fields)


def test_policy_validation():
    small = CFGS["small"]
    assert desc_fields(bp=4, k=4, cfg=small) == {"log2_bp": 2, "log2_k": 2}
    with pytest.raises(DescError, match="bp = 8"):
        desc_fields(bp=8, k=1, cfg=small)
    with pytest.raises(DescError, match="k = 3"):
        desc_fields(bp=1, k=3)
    with pytest.raises(DescError, match="log2_k = 3"):
        pack_desc(small, r=1, p=1, c=1, log2_k=3)   # fits the 2-bit field, but k = 8 > tc


def test_operand_validation():
    cfg = CFGS["default"]
    with pytest.raises(DescError, match="x: value 128"):
        gemm_image(cfg, np.array([[128]]), np.array([[1]]))
    with pytest.raises(DescError, match="shapes"):
        gemm_image(cfg, np.ones((2, 3), int), np.ones((2, 3), int))
    with pytest.raises(DescError, match="bias: shape"):
        gemm_image(cfg, np.ones((2, 3), int), np.ones((3, 4), int), np.zeros(3, int))
    with pytest.raises(DescError, match="dtype"):
        gemm_image(cfg, np.ones((2, 3)), np.ones((3, 4), int))


def test_compulsory_traffic():
    cfg = CFGS["8x8"]                         # M = 8, eb = 1
    rd, wr = compulsory_traffic(cfg, 37, 300, 23, bias=True, out_mode=OUT_RAW)
    assert rd == 37 * 304 + 23 * 304 + 96
    assert wr == 37 * 96
    assert compulsory_bytes(cfg, 37, 300, 23, True, OUT_RAW) == rd + wr
    assert compulsory_traffic(cfg, 1, 1, 1, bias=False, out_mode=OUT_REQUANT) == (16, 8)
    # consistent with the image: X and W regions are exactly what is read
    rng = np.random.default_rng(0)
    im = gemm_image(cfg, _rand(cfg, (37, 300), rng), _rand(cfg, (300, 23), rng),
                    np.zeros(23, np.int32))
    assert rd == 37 * im.x_stride + 23 * im.w_stride + roundup(4 * 23, cfg.mem_bytes)
    assert wr == 37 * im.o_stride
