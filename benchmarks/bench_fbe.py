"""The Fluid Batching Engine on the RTL: random early-exit networks, checked sample by
sample, and the FBE cycle model checked event by event.

    python benchmarks/bench_fbe.py [--runs 8] [--samples 40] [--sim verilator|icarus] [--seed 1] [--step]

Each run: a random network (4 to 8 layers, 1 to 3 exits) on one of two configurations
(4 x 4 with 4 slots; 8 x 8 with 6 slots), random policies, a random memory timing,
``--samples`` samples arriving at random and a greedy test scheduler with odd requests.
Prints per run the samples, merges, RTL cycles, the number of layer / exit-test /
layer-to-layer intervals compared with ``fluidnpu.sim.fbe_model`` and the mismatches,
then the totals and the simulation speed (RTL cycles per wall second, build excluded).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.fbe_runner import build_fbe
from fluidnpu.hw.runner import MemTiming
from fluidnpu.sim.netrun import check_timing, run_samples
from fluidnpu.sim.network import compile_network, random_network

CFGS = [HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, b_max=4,
                 net_entries=16, max_classes=8),
        HwConfig(tc=8, tp=8, tr=8, x_buf_elems=2048, w_buf_elems=1024, mem_bytes=8, b_max=6,
                 net_entries=16, max_classes=12)]
MEMS = [MemTiming(latency=1), MemTiming(latency=5), MemTiming(latency=20),
        MemTiming(latency=11, interval=2, wr_latency=7), MemTiming(latency=3, wr_latency=9)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--step", action="store_true", help="run the FBE in step mode")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.samples < 1:
        ap.error("--runs and --samples must be at least 1")
    for cfg in CFGS:
        build_fbe(cfg, a.sim)
    tot_checked = tot_bad = tot_cycles = tot_samples = 0
    wall = 0.0
    print("| run | config | memory | samples | merges | RTL cycles | checked | mismatches |")
    print("|---|---|---|---|---|---|---|---|")
    for i in range(a.runs):
        rng = np.random.default_rng(a.seed * 1000 + i)
        cfg = CFGS[i % len(CFGS)]
        mem = MEMS[int(rng.integers(len(MEMS)))]
        model, weights, thr, crit = random_network(cfg, rng, classes=int(rng.integers(3, cfg.max_classes + 1)))
        prog = compile_network(cfg, model, weights, thr, crit, n_inputs=a.samples, tag_space=a.samples)
        xs = [rng.integers(-128, 128, prog.input_shape) for _ in range(a.samples)]
        arr = sorted(rng.integers(0, 700 * a.samples, a.samples).tolist())
        pol = {(b, e.lid): (int(rng.integers(0, b + 1)), int(rng.choice(cfg.bp_choices)),
                            int(rng.choice(cfg.k_choices)))
               for b in range(1, cfg.b_max + 1) for e in prog.entries}
        t0 = time.perf_counter()
        outs, run, _ = run_samples(prog, xs, arr, sim=a.sim, mem=mem, policies=pol, step=a.step,
                                   sched={"mode": "greedy", "seed": i, "odd": 0.1, "gap": 30})
        wall += time.perf_counter() - t0
        checked, bad = check_timing(prog, run, pol, mem, step=a.step)
        merges = sum(e["kind"] == "merge" for e in run.events)
        print(f"| {i} | {cfg.tc}x{cfg.tp}, b_max {cfg.b_max} | L={mem.latency} I={mem.interval} | {len(outs)} | "
              f"{merges} | {run.cycles:,} | {checked} | {len(bad)} |")
        for b in bad[:5]:
            print(f"    mismatch: {b}")
        tot_checked += checked
        tot_bad += len(bad)
        tot_cycles += run.cycles
        tot_samples += len(outs)
    print(f"\n{a.runs} runs, {tot_samples} samples, all bit-exact with the reference; "
          f"{tot_checked} intervals checked against the FBE cycle model, {tot_bad} mismatches; "
          f"{tot_cycles:,} RTL cycles in {wall:.1f} s ({tot_cycles / wall:,.0f} cycles/s, {a.sim})")
    return 1 if tot_bad else 0


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        sys.exit(main())
