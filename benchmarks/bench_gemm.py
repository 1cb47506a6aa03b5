"""GEMM benchmark on the RTL: simulation speed, and cycles / utilisation / roofline
efficiency of layer shapes from real CNNs with every legal (B_P, k).

Run on demand (minutes; not part of ``make test``)::

    .venv/bin/python benchmarks/bench_gemm.py [--sim verilator] [--rows N] [--markdown]

Every run is checked bit-exact against the numpy reference. ``--rows`` crops each
layer's R (batch x output pixels) to at most N rows so a sweep over all 16 policies
fits in minutes: the row tiles of a layer are identical, so a crop of many tiles has
the same steady-state utilisation; the cropped R is printed next to the full one.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_REQUANT
from fluidnpu.hw.layout import compulsory_bytes
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.runner import GemmCase, run_gemm, run_gemms

#: (name, R, P, C, bias+requant) — R is batch x output pixels of the layer at batch 1
SHAPES = [
    ("resnet18 conv2_x 3x3", 56 * 56, 3 * 3 * 64, 64, True),
    ("mobilenetv2 1x1 expand", 28 * 28, 32, 192, True),
    ("first layer 3x3x3 (P=27)", 112 * 112, 27, 32, True),
    ("classifier 1x512x10", 1, 512, 10, False),
    ("fc 8x1024x1000", 8, 1024, 1000, False),
]


def roofline_cycles(cfg: HwConfig, R: int, P: int, C: int, bias: bool, out_mode: int) -> int:
    macs = R * P * C
    return max(math.ceil(macs / cfg.lanes),
               math.ceil(compulsory_bytes(cfg, R, P, C, bias, out_mode) / cfg.mem_bytes))


def sim_speed(cfg: HwConfig, sim: str) -> tuple[int, float]:
    """Cycles per wall second of one layer run (build cached beforehand)."""
    rng = np.random.default_rng(0)
    R, P, C = 128, 576, 64
    x = rng.integers(-128, 128, (R, P))
    w = rng.integers(-128, 128, (P, C))
    run_gemm(cfg, x[:1], w, sim=sim)          # build (cached) and warm up
    t = time.perf_counter()
    r = run_gemm(cfg, x, w, sim=sim)
    dt = time.perf_counter() - t
    assert np.array_equal(r.out, gemm_reference(cfg, x, w))
    return r.cycles, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sim", default="verilator", choices=["icarus", "verilator"])
    ap.add_argument("--rows", type=int, default=512, help="crop R to at most this many rows")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    cfg = HwConfig()

    for sim in ("icarus", "verilator"):
        cyc, dt = sim_speed(cfg, sim)
        print(f"simulation speed, {sim}: {cyc} cycles in {dt:.1f} s = {cyc / dt:,.0f} cycles/s "
              f"(default config, cocotb memory model included)")
    if args.speed_only:
        return

    rng = np.random.default_rng(1)
    rows = []
    for name, R_full, P, C, bq in SHAPES:
        R = min(R_full, args.rows)
        x = rng.integers(-128, 128, (R, P))
        w = rng.integers(-128, 128, (P, C))
        bias = rng.integers(-20000, 20000, C) if bq else None
        out_mode = OUT_REQUANT if bq else 0
        cases = [GemmCase(x=x, w=w, bias=bias, out_mode=out_mode, mult=181, shift=15 if bq else 0,
                          relu=bq, bp=bp, k=k, name=f"bp{bp}k{k}") for bp, k in cfg.policies]
        t = time.perf_counter()
        runs = run_gemms(cfg, cases, sim=args.sim)
        dt = time.perf_counter() - t
        ref = gemm_reference(cfg, x, w, bias, out_mode=out_mode, mult=181, shift=15 if bq else 0,
                             relu=bq)
        roof = roofline_cycles(cfg, R, P, C, bias is not None, out_mode)
        macs = R * P * C
        per = []
        for (bp, k), r in zip(cfg.policies, runs):
            assert np.array_equal(r.out, ref), f"{name} bp={bp} k={k}: result differs from numpy"
            per.append((r.cycles, bp, k))
        per.sort()
        best_cyc, bp, k = per[0]
        worst_cyc = per[-1][0]
        rows.append((name, R_full, R, P, C, bp, k, best_cyc, macs / (best_cyc * cfg.lanes),
                     roof / best_cyc, worst_cyc, roof <= math.ceil(macs / cfg.lanes)))
        print(f"{name}: R={R} (of {R_full}) P={P} C={C}: best (B_P,k)=({bp},{k}) {best_cyc} cycles, "
              f"utilisation {macs / (best_cyc * cfg.lanes):.3f}, roofline efficiency {roof / best_cyc:.3f}; "
              f"worst policy {worst_cyc} cycles; {len(per)} policies in {dt:.0f} s, all bit-exact")

    if args.markdown:
        print("\n| layer | R (run / full) | P | C | best (B_P, k) | cycles | utilisation | roofline eff. | worst policy cycles | bound |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, Rf, R, P, C, bp, k, cyc, util, eff, worst, cb in rows:
            print(f"| {name} | {R} / {Rf} | {P} | {C} | ({bp}, {k}) | {cyc} | {util:.3f} | {eff:.3f} | "
                  f"{worst} | {'compute' if cb else 'memory'} |")


if __name__ == "__main__":
    main()
