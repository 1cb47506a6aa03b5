"""GEMM benchmark on the RTL: simulation speed, and cycles / utilisation / roofline
efficiency of layer shapes from real CNNs with every legal (B_P, k).

Run on demand (minutes; not part of ``make test``)::

    .venv/bin/python benchmarks/bench_gemm.py [--sim verilator] [--budget N] [--markdown] \
        [--config examples/hw_8x8.toml] [--model-only]

Full-size figures come from the cycle model (sim/cycle_model.py), which equals the
RTL cycle for cycle; the benchmark re-proves that on the way: every policy of every
shape also runs on the RTL on a crop of the layer (sized by ``--budget``), bit-exact
against numpy and with exactly the model's cycle count. (RTL simulation runs a few
thousand cycles per second with the cocotb memory model, too slow for the full layers.)
``--model-only`` prints the full-layer figures alone, in seconds, without that proof.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from fluidnpu.hw.config import HwConfig, load_hw_config
from fluidnpu.hw.interface import OUT_REQUANT
from fluidnpu.metrics import roofline
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.gemm_runner import GemmCase, run_gemm, run_gemms
from fluidnpu.sim.cycle_model import layer_cycles
from fluidnpu.sim.traffic import tiled_traffic

#: (name, R, P, C, bias+requant) — R is batch x output pixels of the layer at batch 1
SHAPES = [
    ("resnet18 conv2_x 3x3", 56 * 56, 3 * 3 * 64, 64, True),
    ("mobilenetv2 1x1 expand", 28 * 28, 32, 192, True),
    ("first layer 3x3x3 (P=27)", 112 * 112, 27, 32, True),
    ("classifier 1x512x10", 1, 512, 10, False),
    ("fc 8x1024x1000", 8, 1024, 1000, False),
    # deep reduction: P above x_buf_elems / tr, run in tall row tiles (docs/architecture.md,
    # "Tiling"); 4608 at k = 1 is still chunked (W holds 4096), see the tiled roofline
    ("deep-K 64x1152x64", 64, 1152, 64, True),
    ("resnet18 conv4_x 3x3 (P=2304)", 14 * 14, 3 * 3 * 256, 256, True),
    ("resnet18 conv5_x 3x3 (P=4608)", 7 * 7, 3 * 3 * 512, 512, True),
]


def lane_bound(cfg: HwConfig, P: int, bp: int, k: int) -> float:
    """The most of the roofline a policy can reach on reduction length P: a row's P
    elements take ceil(P / S) cycles of S = k * tp / B_P lanes (padding of the last)."""
    S = k * cfg.tp // bp
    return P / (math.ceil(P / S) * S)


def row_bound(cfg: HwConfig, R: int, P: int, bp: int, k: int) -> float:
    """The most of the roofline a policy can reach on R rows: each row tile's rows go to
    the array in groups of B_P, so a tile of r rows takes ceil(r / B_P) groups (the last
    padded; R = 49 at B_P = 8: 49 of 56 row slots)."""
    rows = cfg.row_tile_sizes(R, cfg.tile_rows(P, k))
    return R / sum(math.ceil(r / bp) * bp for r in rows)


def roofline_cycles(cfg: HwConfig, R: int, P: int, C: int, bias: bool, out_mode: int) -> int:
    return roofline(cfg, R, P, C, bias=bias, requant=out_mode == OUT_REQUANT).cycles


def sim_speed(cfg: HwConfig, sim: str, rows: int) -> tuple[int, float]:
    """Cycles per wall second of one layer run (build cached beforehand)."""
    rng = np.random.default_rng(0)
    P, C = 576, 64
    x = rng.integers(-128, 128, (rows, P))
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
    ap.add_argument("--budget", type=int, default=16384,
                    help="RTL crops: rows so that the ideal compute is about this many cycles")
    ap.add_argument("--cols", type=int, default=128, help="RTL crops: at most this many columns")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--model-only", action="store_true",
                    help="full-layer figures from the cycle model only: no simulation speed runs, "
                         "no RTL crops (seconds instead of minutes; the RTL == model proof is skipped)")
    ap.add_argument("--rtl-full", type=int, default=0, metavar="CYCLES",
                    help="also run the whole layer on the RTL with its best policy when the model "
                         "gives at most CYCLES cycles (bit-exact, cycle-equal; 0: off)")
    ap.add_argument("--only", default=None,
                    help="run only the shapes whose name contains this (and skip the speed runs)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--config", default=None, help="hardware config TOML (default: HwConfig())")
    args = ap.parse_args()
    cfg = load_hw_config(args.config) if args.config else HwConfig()

    if args.model_only and (args.speed_only or args.rtl_full):
        ap.error("--model-only runs no RTL: it excludes --speed-only and --rtl-full")
    for sim, rows in (() if args.only or args.model_only else (("icarus", 16), ("verilator", 128))):
        cyc, dt = sim_speed(cfg, sim, rows)
        print(f"simulation speed, {sim}: {cyc} cycles in {dt:.1f} s = {cyc / dt:,.0f} cycles/s "
              f"({cfg.tc} x {cfg.tp}, cocotb memory model included)")
    if args.speed_only:
        return

    rng = np.random.default_rng(1)
    rows = []
    below = []      # (layer, B_P, k, roofline efficiency, lane bound, row bound) of compute-bound layers
    full_rtl = []
    for name, R_full, P, C, bq in SHAPES:
        if args.only and args.only not in name:
            continue
        out_mode = OUT_REQUANT if bq else 0
        # Full layer, every policy, from the cycle model (proven equal to the RTL).
        per = sorted((layer_cycles(cfg, R_full, P, C, bp=bp, k=k, bias=bq, out_mode=out_mode), bp, k)
                     for bp, k in cfg.policies)
        best_cyc, bp, k = per[0]
        macs = R_full * P * C
        roof = roofline_cycles(cfg, R_full, P, C, bq, out_mode)
        # the roofline of the bytes the best policy's tiling really moves
        tiled = max(math.ceil(macs / cfg.lanes),
                    tiled_traffic(cfg, R_full, P, C, bp=bp, k=k, bias=bq, out_mode=out_mode).cycles)
        cyc_of = {(b, kk): c for c, b, kk in per}
        effs = {pol: roof / cyc_of[pol] for pol in cfg.policies}
        compute_bound = roof <= math.ceil(macs / cfg.lanes)
        if compute_bound:
            for (b, kk), e in effs.items():
                if e < 0.9:
                    # the policy's own tiling: the bytes it really moves, at mem_bytes a cycle
                    tb = roof / max(roof, tiled_traffic(cfg, R_full, P, C, bp=b, k=kk, bias=bq,
                                                        out_mode=out_mode).cycles)
                    below.append((name, b, kk, e, lane_bound(cfg, P, b, kk), row_bound(cfg, R_full, P, b, kk), tb))
        # RTL: every policy on a crop of the layer, bit-exact and cycle-equal to the model.
        if args.model_only:
            rows.append((name, R_full, P, C, bp, k, best_cyc, macs / (best_cyc * cfg.lanes), roof / best_cyc,
                         tiled / best_cyc, per[-1][0], compute_bound, "-", None, None))
            print(f"{name}: R={R_full} P={P} C={C}: best (B_P,k)=({bp},{k}) {best_cyc} cycles, "
                  f"utilisation {macs / (best_cyc * cfg.lanes):.3f}, roofline efficiency {roof / best_cyc:.3f} "
                  f"(tiled roofline {tiled} cycles: {tiled / best_cyc:.3f}), worst policy {per[-1][0]} cycles "
                  f"(cycle model only)")
            print("    every policy, full layer, roofline eff.: "
                  + " ".join(f"({b},{kk}) {e:.3f}" for (b, kk), e in effs.items()))
            continue
        R = min(R_full, max(cfg.tr, args.budget * cfg.lanes // (P * C)))
        Cc = min(C, args.cols, max(4 * cfg.tc, args.budget * cfg.lanes // (R * P)))
        x = rng.integers(-128, 128, (R, P))
        w = rng.integers(-128, 128, (P, Cc))
        bias = rng.integers(-20000, 20000, Cc) if bq else None
        shift = 15 if bq else 0
        cases = [GemmCase(x=x, w=w, bias=bias, out_mode=out_mode, mult=181, shift=shift, relu=bq,
                          bp=b, k=kk, name=f"bp{b}k{kk}") for b, kk in cfg.policies]
        t = time.perf_counter()
        runs = run_gemms(cfg, cases, sim=args.sim)
        dt = time.perf_counter() - t
        ref = gemm_reference(cfg, x, w, bias, out_mode=out_mode, mult=181, shift=shift, relu=bq)
        crop_best = None
        for (b, kk), r in zip(cfg.policies, runs):
            assert np.array_equal(r.out, ref), f"{name} bp={b} k={kk}: result differs from numpy"
            model = layer_cycles(cfg, R, P, Cc, bp=b, k=kk, bias=bq, out_mode=out_mode)
            assert model == r.cycles, f"{name} bp={b} k={kk}: RTL {r.cycles} cycles, model {model}"
            if (b, kk) == (bp, k):
                crop_best = r.cycles
        crop_roof = roofline_cycles(cfg, R, P, Cc, bq, out_mode)
        rows.append((name, R_full, P, C, bp, k, best_cyc, macs / (best_cyc * cfg.lanes), roof / best_cyc,
                     tiled / best_cyc, per[-1][0], compute_bound, f"{R}x{P}x{Cc}",
                     crop_best, crop_roof / crop_best))
        print(f"{name}: R={R_full} P={P} C={C}: best (B_P,k)=({bp},{k}) {best_cyc} cycles, "
              f"utilisation {macs / (best_cyc * cfg.lanes):.3f}, roofline efficiency {roof / best_cyc:.3f} "
              f"(tiled roofline {tiled} cycles: {tiled / best_cyc:.3f}), "
              f"worst policy {per[-1][0]} cycles; RTL on {R}x{P}x{Cc}: {len(cases)} policies bit-exact and equal to the "
              f"model ({dt:.0f} s), best policy {crop_best} cycles, roofline eff. {crop_roof / crop_best:.3f}")
        if best_cyc <= args.rtl_full:
            xf = rng.integers(-128, 128, (R_full, P))
            wf = rng.integers(-128, 128, (P, C))
            bf = rng.integers(-20000, 20000, C) if bq else None
            t = time.perf_counter()
            r = run_gemm(cfg, xf, wf, bias=bf, out_mode=out_mode, mult=181, shift=shift, relu=bq,
                         bp=bp, k=k, sim=args.sim)
            ref = gemm_reference(cfg, xf, wf, bf, out_mode=out_mode, mult=181, shift=shift, relu=bq)
            assert np.array_equal(r.out, ref), f"{name}: whole layer differs from numpy"
            assert r.cycles == best_cyc, f"{name}: RTL {r.cycles} cycles, model {best_cyc}"
            full_rtl.append((name, bp, k, r.cycles, roof / r.cycles))
            print(f"    whole layer on the RTL ({args.sim}), (B_P, k) = ({bp}, {k}): {r.cycles} cycles "
                  f"= the model, bit-exact, roofline eff. {roof / r.cycles:.3f} ({time.perf_counter() - t:.0f} s)")
        print("    every policy, full layer, roofline eff.: "
              + " ".join(f"({b},{kk}) {e:.3f}" for (b, kk), e in effs.items()))

    for name, b, kk, cyc, eff in full_rtl:
        print(f"whole layer on the RTL: {name} ({b}, {kk}): {cyc} cycles, roofline eff. {eff:.3f}")
    print(f"\ncompute-bound layers: {len(below)} (layer, policy) pairs below 0.9 of the roofline"
          + (" (lane bound: the most the policy's lanes allow on this P; row bound: ... its row "
             "groups on this R; tiled-traffic bound: the roofline over the cycles the bytes "
             "its tiling moves take)" if below else ""))
    for name, b, kk, e, lb, rb, tb in below:
        print(f"  {name} (B_P, k) = ({b}, {kk}): {e:.3f}, lane bound {lb:.3f}, row bound {rb:.3f}, "
              f"tiled-traffic bound {tb:.3f}"
              + (" (the policy cannot reach 0.9 here)" if min(lb * rb, tb) < 0.9 else ""))
    n_can = sum(min(lb * rb, tb) >= 0.9 for *_, lb, rb, tb in below)
    print(f"of which {n_can} under bounds of 0.9 or more (the rest cannot reach 0.9 with that "
          f"policy's lanes, row groups or the bytes its tiling moves)")

    if args.markdown:
        print("\n| layer | R | P | C | best (B_P, k) | cycles | utilisation | roofline eff. | tiled roofline eff. | worst policy | bound | RTL crop RxPxC | RTL cycles | RTL roofline eff. |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, Rf, P, C, bp, k, cyc, util, eff, teff, worst, cb, R, rc, reff in rows:
            rtl = "- | -" if rc is None else f"{rc} | {reff:.3f}"
            print(f"| {name} | {Rf} | {P} | {C} | ({bp}, {k}) | {cyc} | {util:.3f} | {eff:.3f} | {teff:.3f} | "
                  f"{worst} | {'compute' if cb else 'memory'} | {R} | {rtl} |")


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        main()
