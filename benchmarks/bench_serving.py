"""Serving-simulator speed: requests simulated per second of wall time, per scheduler.

    python benchmarks/bench_serving.py [--requests 1000000] [--schedulers fluid,dynamic,...]

Scenario: ``default_scenario`` (8 cameras, half Poisson, half spiking MMPP, the toy
early-exit CNN, SLO 5x) at 500 requests/s per camera (about 80% of the NPU's
batched capacity), on the synthetic stand-in latency tables. The target is at least
1 million requests in 60 s on one core.
"""
from __future__ import annotations

import argparse
import time

from fluidnpu.sched import names
from fluidnpu.sim.latency import LatencyTable
from fluidnpu.sim.serving import generate_requests, run, slo_bases
from fluidnpu.sim.serving.examples import default_scenario, toy_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=500.0, help="requests/s per camera")
    ap.add_argument("--schedulers", default=",".join(names()))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    model = toy_model()
    tables = {hw: LatencyTable.synthetic(model, hw) for hw in ("rbatch", "fluid")}
    rate = default_scenario(rate_per_device=a.rate).mean_rate
    sc = default_scenario(rate_per_device=a.rate, duration_s=a.requests / rate, slo_mult=5.0)
    t0 = time.perf_counter()
    reqs = generate_requests(sc, a.seed, slo_bases(sc, tables["rbatch"]))
    print(f"scenario: {len(reqs)} requests over {sc.duration_s:.0f} s simulated; "
          f"draws took {time.perf_counter() - t0:.2f} s")
    runs = [(n, "rbatch") for n in a.schedulers.split(",")] + \
        [("fluid", "fluid")] * ("fluid" in a.schedulers.split(","))
    for name, hw in runs:
        t0 = time.perf_counter()
        r = run(sc, name, tables[hw], a.seed, slo_reference=tables["rbatch"], requests=reqs)
        dt = time.perf_counter() - t0
        s = r.summary()
        print(f"{name:>8} on {hw:<6}: {len(reqs) / dt:>9,.0f} requests/s  ({dt:5.1f} s wall)  "
              f"mean {s['mean_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  SLO {s['slo_attainment']:.3f}")


if __name__ == "__main__":
    main()
