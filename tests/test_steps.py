"""The layer parameters the hardware derives from a descriptor (hw/steps.py,
``derive_layer_params``) against the tiling of ``HwConfig``: row tile height, the row
tiles' balance, the chunks (their count, size, balance and last length) and whether X is
resident, on random layers of several configurations (Amaranth's simulator; no build)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import layer_desc_layout, log2
from fluidnpu.hw.steps import derive_layer_params, layer_params_layout

sys.path.insert(0, str(Path(__file__).parent))
from configs import RESIDENT  # noqa: E402

CFGS = {
    "8x8": HwConfig(),
    "16x8": HwConfig(tc=16),
    "4x4": HwConfig(tc=4, tp=4, x_buf_elems=65536, w_buf_elems=16384),
    "small": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4),
    "resident": RESIDENT,
}


class _Derive(Elaboratable):
    def __init__(self, cfg):
        self.cfg = cfg
        self.desc = Signal(layer_desc_layout(cfg))
        self.lp = Signal(layer_params_layout(cfg))

    def elaborate(self, platform):
        m = Module()
        derive_layer_params(m, self.cfg, self.desc, self.lp)
        return m


def _expected(cfg, R, P, k):
    rows = cfg.tile_rows(P, k)
    cm = cfg.chunk_max(k, rows)
    chunks = cfg.chunk_sizes(P, k, rows)
    rts = cfg.row_tile_sizes(R, rows)
    return dict(
        ltr=log2(rows), ch_one=int(len(chunks) == 1), xres=int(cfg.x_resident(P, k)),
        lcm=log2(cm), pm=chunks[-1] - 1,
        cbal=int(len(chunks) >= 2 and chunks[-2] != cm),
        cpen0=int(len(chunks) == 2 and chunks[0] != cm),
        rt_one=int(len(rts) == 1), rbal=int(len(rts) >= 2 and rts[-2] != rows),
        rm=(rts[-1] - 1) & ((1 << max(1, log2(cfg.tr_max))) - 1))


def _layers(cfg, rng, n):
    """Random (R, P, k): P spread over every regime (short rows, one chunk at each height,
    X resident, X and W chunked) up to four times what X holds at the lowest height."""
    top = min(4 * cfg.x_buf_elems // cfg.tr_min, (1 << cfg.dim_width) - 1)
    out = []
    for _ in range(n):
        k = int(rng.choice(cfg.k_choices))
        P = int(np.exp(rng.uniform(0, np.log(top)))) + int(rng.integers(0, 3))
        out.append((int(rng.integers(1, 4 * cfg.tr_max)), min(P, top), k))
    return out


@pytest.mark.parametrize("name", list(CFGS))
def test_derived_tiling_matches_config(name):
    cfg = CFGS[name]
    dut = _Derive(cfg)
    layers = _layers(cfg, np.random.default_rng(len(name)), 300)
    if name == "resident":
        # every resident case of this small configuration, all stacking factors
        layers += [(R, P, k) for k in cfg.k_choices for P in range(60, 300, 7)
                   for R in (1, 17, 40)]
    seen_res = 0
    bad = []

    async def tb(ctx):
        nonlocal seen_res
        for R, P, k in layers:
            ctx.set(dut.desc.r, R)
            ctx.set(dut.desc.p, P)
            ctx.set(dut.desc.c, 1)
            ctx.set(dut.desc.log2_k, log2(k))
            ctx.set(dut.desc.log2_bp, 0)
            await ctx.tick().repeat(2)            # the height's choice is a register
            want = _expected(cfg, R, P, k)
            got = {f: ctx.get(getattr(dut.lp, f)) for f in want}
            if want["ch_one"]:                    # one chunk: nothing to balance
                got["cbal"] = want["cbal"] = got["cpen0"] = want["cpen0"] = 0
            seen_res += want["xres"]
            if got != want:
                bad.append(f"R={R} P={P} k={k}: got {got}, want {want}")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert not bad, f"{len(bad)} of {len(layers)} layers differ:\n" + "\n".join(bad[:20])
    if name in ("resident", "8x8", "4x4"):
        assert seen_res >= 5, f"only {seen_res} resident layers drawn"
