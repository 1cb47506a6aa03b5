"""Cycle model: agreement with the RTL on random layers, and the model's speed.

    python benchmarks/bench_cycle_model.py [--cases 240] [--sim auto|verilator|icarus]
                                           [--seed 1] [--no-rtl] [--max-cycles 40000]

RTL part: ``--cases`` random layers, split over the default and the small configuration
(``tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4``), random policies,
bias and output mode, shapes of every kind (single row, below one tile, ragged, several
chunks, W reuse, many column tiles, many row tiles) and memory timings (latency 1..60,
interval 1..3, small depths, other write latencies). Each configuration runs as one
simulator launch (``run_gemms``); every case's cycle count is compared with
``layer_cycles`` and every mismatch is printed. The RTL runs at roughly 10 k cycles/s
(the cocotb memory model), so ``--max-cycles`` bounds the cost of one case.

Speed part: random layers per second (cold cache), and the time to build a full table
for the zoo's ResNet-50: batches 1..8 x 16 policies x every layer (``R = b * r``), bias
on, requant, default memory timing, default configuration.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

import numpy as np

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.gemm_runner import GemmCase, run_gemms
from fluidnpu.hw.runner import MemTiming, SimError, build_core
from fluidnpu.sim import cycle_model
from fluidnpu.sim.cycle_model import layer_cycles, layer_timing

CFGS = {"default": HwConfig(),
        "small": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)}
MEMS = (MemTiming(latency=1), MemTiming(latency=20), MemTiming(latency=50),
        MemTiming(latency=1, interval=2), MemTiming(latency=20, interval=2),
        MemTiming(latency=3, interval=3, wr_latency=7), MemTiming(latency=9, depth=3, wr_depth=2),
        MemTiming(latency=40, interval=2, depth=5, wr_latency=2, wr_depth=1),
        MemTiming(latency=2, wr_latency=30), MemTiming(latency=60, wr_latency=50, wr_depth=10))
KINDS = ("tiny", "r1", "ragged", "chunks", "wreuse", "wide", "many", "manyrt")


def _shape(cfg, rng, kind, k):
    tr, tp, tc = cfg.tr, cfg.tp, cfg.tc
    F = tc // k
    cm = cfg.chunk_max(k)
    r = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    return {"tiny": lambda: (r(1, tr), r(1, tp), r(1, tc)),
            "r1": lambda: (1, r(1, 4 * tp * tc), r(1, 3 * F)),
            "ragged": lambda: (r(1, 3 * tr), r(1, 3 * tp * tc), r(1, 3 * F)),
            "chunks": lambda: (r(1, 2 * tr), r(cm + 1, 2 * cm + cm // 2), r(1, 2 * F + 1)),
            "wreuse": lambda: (r(3 * tr, 8 * tr), r(1, min(cm, 64)), r(1, F)),
            "wide": lambda: (r(1, 2 * tr), r(1, 40), r(3 * F, 10 * F)),
            "many": lambda: (r(6 * tr, 16 * tr), r(1, cm + cm // 2), r(3 * F, 8 * F)),
            "manyrt": lambda: (r(10 * tr, 30 * tr), r(1, 100), r(1, 2 * F)),
            }[kind]()


def _specs(cfg, rng, n, max_cycles):
    out = []
    while len(out) < n:
        kind = KINDS[len(out) % len(KINDS)]
        bp = int(rng.choice(cfg.bp_choices))
        k = int(rng.choice(cfg.k_choices))
        R, P, C = _shape(cfg, rng, kind, k)
        s = dict(R=R, P=P, C=C, bp=bp, k=k, bias=bool(rng.random() < 0.5),
                 out_mode=OUT_REQUANT if rng.random() < 0.5 else OUT_RAW,
                 mem=MEMS[int(rng.integers(len(MEMS)))], kind=kind)
        s["model"] = layer_cycles(cfg, R, P, C, bp=bp, k=k, bias=s["bias"],
                                  out_mode=s["out_mode"], mem=s["mem"])
        if s["model"] <= max_cycles:
            out.append(s)
    return out


def _pick_sim(cfg, want):
    if want != "auto":
        return want
    try:
        build_core(cfg, "verilator")
        return "verilator"
    except SimError as e:
        print(f"  (Verilator build failed, using Icarus: {str(e).splitlines()[0]})")
        return "icarus"


def rtl_check(n_cases, seed, sim, max_cycles) -> int:
    rng = np.random.default_rng(seed)
    checked = bad = 0
    for i, (name, cfg) in enumerate(CFGS.items()):
        n = n_cases // len(CFGS) + (i < n_cases % len(CFGS))
        specs = _specs(cfg, rng, n, max_cycles)
        cases = []
        for s in specs:
            x = rng.integers(-3, 4, (s["R"], s["P"]))
            w = rng.integers(-3, 4, (s["P"], s["C"]))
            b = rng.integers(-100, 100, s["C"]) if s["bias"] else None
            cases.append(GemmCase(x=x, w=w, bias=b, out_mode=s["out_mode"], mult=3, shift=2,
                                  bp=s["bp"], k=s["k"], mem=s["mem"]))
        which = _pick_sim(cfg, sim)
        t0 = time.perf_counter()
        rdir = tempfile.mkdtemp(prefix="fluidnpu-bench-cycle-model-")
        try:
            runs = run_gemms(cfg, cases, sim=which, check=False, run_dir=rdir)
        finally:
            shutil.rmtree(rdir, ignore_errors=True)
        dt = time.perf_counter() - t0
        cyc = sum(r.cycles or 0 for r in runs)
        nbad = 0
        for s, r in zip(specs, runs):
            if r.error is not None or r.cycles != s["model"]:
                nbad += 1
                print(f"  MISMATCH {name} {s['kind']} R,P,C={s['R']},{s['P']},{s['C']} "
                      f"bp={s['bp']} k={s['k']} bias={s['bias']} out_mode={s['out_mode']} "
                      f"{s['mem']}: RTL {r.cycles} model {s['model']}"
                      + (f" ({r.error[:160]})" if r.error else ""))
        sim_steps = sum(layer_timing(cfg, s["R"], s["P"], s["C"], bp=s["bp"], k=s["k"],
                                     bias=s["bias"], out_mode=s["out_mode"],
                                     mem=s["mem"]).simulated_steps for s in specs)
        all_steps = sum(layer_timing(cfg, s["R"], s["P"], s["C"], bp=s["bp"], k=s["k"],
                                     bias=s["bias"], out_mode=s["out_mode"],
                                     mem=s["mem"]).steps for s in specs)
        print(f"{name:>8} ({which}): {len(specs)} cases, {cyc:,} RTL cycles in {dt:.0f} s, "
              f"{nbad} mismatches; model simulated {sim_steps} of {all_steps} steps")
        checked += len(specs)
        bad += nbad
    print(f"RTL agreement: {checked} cases checked, {bad} mismatches")
    return bad


def speed(seed):
    rng = np.random.default_rng(seed)
    cfg = CFGS["default"]
    layers = []
    for _ in range(2000):
        bp = int(rng.choice(cfg.bp_choices))
        k = int(rng.choice(cfg.k_choices))
        layers.append((int(rng.integers(1, 5000)), int(rng.integers(1, 5000)),
                       int(rng.integers(1, 1024)), bp, k))
    cycle_model._layer_timing.cache_clear()
    t0 = time.perf_counter()
    for R, P, C, bp, k in layers:
        layer_cycles(cfg, R, P, C, bp=bp, k=k, bias=True, out_mode=OUT_REQUANT)
    dt = time.perf_counter() - t0
    print(f"random layers (R, P < 5000, C < 1024, default config and memory): "
          f"{len(layers) / dt:,.0f} layers/s")

    from fluidnpu.sim.workloads import zoo
    model = zoo.load("resnet50")
    cycle_model._layer_timing.cache_clear()
    t0 = time.perf_counter()
    n = 0
    table = np.zeros((9, len(model.layers), len(cfg.policies)), dtype=np.int64)
    for b in range(1, 9):
        for li, l in enumerate(model.layers):
            for pi, (bp, k) in enumerate(cfg.policies):
                table[b, li, pi] = layer_cycles(cfg, b * l.r, l.p, l.c, bp=bp, k=k, bias=True,
                                                out_mode=OUT_REQUANT)
                n += 1
    dt = time.perf_counter() - t0
    info = cycle_model._layer_timing.cache_info()
    best = table[1:].min(axis=2).sum(axis=1)
    print(f"resnet50 table: {n} entries (8 batches x {len(model.layers)} layers x "
          f"{len(cfg.policies)} policies, {info.misses} distinct) in {dt:.2f} s; "
          f"best-policy cycles per batch: " + ", ".join(f"b{b}={c:,}" for b, c in
                                                         zip(range(1, 9), best)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--sim", default="auto", choices=("auto", "verilator", "icarus"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-cycles", type=int, default=40_000)
    ap.add_argument("--no-rtl", action="store_true", help="only the speed figures")
    a = ap.parse_args(argv)
    speed(a.seed)
    bad = 0
    if not a.no_rtl:
        bad = rtl_check(a.cases, a.seed, a.sim, a.max_cycles)
    return 1 if bad else 0


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        sys.exit(main())
