"""Serving-simulator speed: requests simulated per second of wall time, per scheduler.

    python benchmarks/bench_serving.py [--requests 1000000] [--schedulers fluid,dynamic,...]
                                       [--load 0.8] [--pattern spiking]

Scenario: the shipped default scenario (sim/serving/default_scenario.toml: 4 B-AlexNet
cameras, a MobileNetV2 doorbell and 4 digits sensors on the default 8 x 8 NPU at
100 MHz), its device rates scaled to ``--load`` (fraction of the batch-1 capacity)
with the ``--pattern`` arrivals, as ``fluidnpu compare`` does. Service times come from
the policy mapper's latency tables (cycle model): baselines on rbatch hardware,
``fluid`` on fluid hardware. One process, no invariant checks. The target is at least
1 million requests in 60 s on one core.
"""
from __future__ import annotations

import argparse
import time

from fluidnpu.sim.serving import generate_requests, run, slo_bases
from fluidnpu.sim.serving.compare import (SCHEDULERS, load_with_spec, scaled_scenario, serving_tables,
                                          truncate_requests)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--pattern", choices=("steady", "spiking"), default="spiking")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    sc, spec = load_with_spec()
    tabs = serving_tables(sc)
    t_map = time.perf_counter() - t0
    s2 = scaled_scenario(sc, tabs["rbatch"], a.load, a.pattern, int(a.requests * 1.05), spec)
    t0 = time.perf_counter()
    reqs = truncate_requests(generate_requests(s2, a.seed, slo_bases(s2, tabs["rbatch"])), a.requests)
    print(f"scenario {s2.name}: {len(reqs):,} requests over {reqs.arrival[-1]:.0f} s simulated; mapping took "
          f"{t_map:.2f} s, draws {time.perf_counter() - t0:.2f} s")
    for name in a.schedulers.split(","):
        hw = "fluid" if name == "fluid" else "rbatch"
        t0 = time.perf_counter()
        r = run(s2, name, tabs[hw], a.seed, slo_reference=tabs["rbatch"], requests=reqs)
        dt = time.perf_counter() - t0
        s = r.summary()
        print(f"{name:>8} on {hw:<6}: {len(reqs) / dt:>9,.0f} requests/s  ({dt:5.1f} s wall)  "
              f"mean {s['mean_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  SLO {s['slo_attainment']:.3f}  "
              f"preemptions {s['preemptions']}")


if __name__ == "__main__":
    main()
