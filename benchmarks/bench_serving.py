"""Serving-simulator speed: ``fluidnpu serve --requests N`` end to end on one core, and each
scheduler's simulation alone.

    python benchmarks/bench_serving.py [--requests 1000000] [--schedulers fluid,dynamic,...]
                                       [--load 0.8] [--pattern spiking] [--skip-e2e] [--skip-schedulers]

1. **End to end** (the goal: at least 250 000 requests/s on one core): ``fluidnpu serve
   --requests N`` in a fresh process pinned to one core (``taskset -c 0`` where it exists):
   start-up, latency tables (from the file cache after a first run), the draws, the
   ``fluid`` scheduler on fluid hardware over the shipped default scenario at its own rates,
   the per-device summary and the table. Requests per second of wall time, and of the
   process's CPU time (user + system), which is what a busy shared machine does not distort.
2. **Per scheduler**: the default scenario's device rates scaled to ``--load`` (fraction of
   the batch-1 capacity) with ``--pattern`` arrivals, as ``fluidnpu compare`` does; one
   process, no invariant checks; the simulation alone (``run``), CPU time.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fluidnpu.sim.serving import generate_requests, run, slo_bases
from fluidnpu.sim.serving.compare import (PATTERNS, SCHEDULERS, load_with_spec, scaled_scenario, serving_tables,
                                          truncate_requests)

GOAL = 250_000


def end_to_end(n: int) -> None:
    exe = Path(sys.executable).with_name("fluidnpu")
    cmd = [str(exe), "serve", "--requests", str(n)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    subprocess.run(cmd[:-2] + ["--requests", "1000"], check=True, capture_output=True)   # fill the table cache
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sim = [ln for ln in out.stdout.splitlines() if ln.startswith("simulated")]
    print(f"end to end, {' '.join(cmd)}:")
    print(f"  {n / wall:>9,.0f} requests/s of wall time ({wall:.2f} s), {n / cpu:>9,.0f} requests/s of CPU time "
          f"({cpu:.2f} s); goal {GOAL:,}")
    if sim:
        print(f"  {sim[0]}")


def per_scheduler(n: int, load: float, pattern: str, names: list[str], seed: int) -> None:
    t0 = time.perf_counter()
    sc, spec = load_with_spec()
    tabs = serving_tables(sc)
    t_map = time.perf_counter() - t0
    s2 = scaled_scenario(sc, tabs["rbatch"], load, pattern, int(n * 1.05), spec)
    t0 = time.perf_counter()
    reqs = truncate_requests(generate_requests(s2, seed, slo_bases(s2, tabs["rbatch"])), n)
    print(f"scenario {s2.name}: {len(reqs):,} requests over {reqs.arrival[-1]:.0f} s simulated; tables took "
          f"{t_map:.2f} s, draws {time.perf_counter() - t0:.2f} s")
    for name in names:
        hw = "fluid" if name == "fluid" else "rbatch"
        t0, c0 = time.perf_counter(), time.process_time()
        r = run(s2, name, tabs[hw], seed, slo_reference=tabs["rbatch"], requests=reqs)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        s = r.summary()
        print(f"{name:>8} on {hw:<6}: {len(reqs) / dc:>9,.0f} requests/s CPU ({dc:5.1f} s; wall {dt:5.1f} s)  "
              f"mean {s['mean_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  SLO {s['slo_attainment']:.3f}  "
              f"preemptions {s['preemptions']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--pattern", choices=PATTERNS, default="spiking")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-e2e", action="store_true", help="only the per-scheduler part")
    ap.add_argument("--skip-schedulers", action="store_true", help="only the end-to-end part")
    a = ap.parse_args(argv)
    if not a.skip_e2e:
        end_to_end(a.requests)
    if not a.skip_schedulers:
        per_scheduler(a.requests, a.load, a.pattern, a.schedulers.split(","), a.seed)


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        main()
