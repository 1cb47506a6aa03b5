"""The table model's error against the FBE mode (equal to the RTL) over many traces, and how
much of it is chaos: the same traces with every arrival moved by a few cycles.

    python benchmarks/bench_tables_bound.py [--jitter 20] [--copies 4] [--requests 200]
                                            [--without-leave-cycles] [--loads 0.5,1.0,1.5]
                                            [--seeds 1,2,3] [--schedulers fluid,lazy,...]

Runs the default co-simulation scenario at loads 0.5, 1.0 and 1.5, seeds 1 to 3, for the five
schedulers of tests/test_cosim.py::test_tables_model_error_is_bounded, on the FBE mode and on
the default serving simulator (mapper tables, fluid hardware), first on the drawn traces and
then on ``--copies`` copies of each with every arrival moved by a random -J..+J cycles
(``--jitter J``). Prints the range of the relative error in mean and p99 latency and of the
absolute error in SLO attainment, on the drawn traces and on all, and every run whose p99 is
off by more than 20 %, and the trace whose FBE-mode p99 spreads most over its copies.
``--loads``/``--seeds``/``--schedulers`` pick a subset. ``--without-leave-cycles`` runs the tables as they were before
3 Dec 2026 (no cycles for samples leaving at a head, no preempt or merge cycles).
docs/cosim.md ("The bound, over more traces") quotes this.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np

from fluidnpu.sim.cosim.run import DEFAULT_SCENARIO, metric_errors, prepare, run_model, run_tables
from fluidnpu.sim.serving import load_scenario, scale_rates, tables
from fluidnpu.sim.serving.scenario import Requests

SCHEDULERS = [("fluid", {}), ("lazy", {}), ("fcfs", {}), ("clipper", {}), ("dynamic", {"max_delay_ms": 0.01})]


def _jittered(s, rng, j):
    """The setup ``s`` with every arrival moved by -j..+j cycles (kept sorted and >= 0)."""
    a = np.maximum(np.sort(s.arrival_cycle + rng.integers(-j, j + 1, size=s.arrival_cycle.size)), 0)
    r = s.requests
    s.arrival_cycle = a
    s.requests = Requests(arrival=a / (s.cfg.clock_mhz * 1e6), device=r.device, model=r.model, exit=r.exit,
                          slo_s=r.slo_s)
    return s


def _ranges(rows):
    a = np.array([r[4:] for r in rows])
    return (f"mean {100 * a[:, 0].min():+.1f} % to {100 * a[:, 0].max():+.1f} %, "
            f"p99 {100 * a[:, 1].min():+.1f} % to {100 * a[:, 1].max():+.1f} %, "
            f"SLO {a[:, 2].min():+.3f} to {a[:, 2].max():+.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jitter", type=int, default=20, help="cycles each arrival may move (default 20)")
    ap.add_argument("--copies", type=int, default=4, help="jittered copies of each trace (default 4)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--without-leave-cycles", action="store_true",
                    help="tables without exit_leave_cycles and without preempt/merge cycles (before 3 Dec 2026)")
    ap.add_argument("--loads", default="0.5,1.0,1.5", help="comma-separated factors on every device's rate")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--schedulers", default=",".join(n for n, _ in SCHEDULERS))
    a = ap.parse_args(argv)
    try:
        loads = [float(x) for x in a.loads.split(",")]
        seeds = [int(x) for x in a.seeds.split(",")]
    except ValueError as e:
        ap.error(f"--loads = {a.loads!r} / --seeds = {a.seeds!r}: comma-separated numbers ({e})")
    known = dict(SCHEDULERS)
    scheds = a.schedulers.split(",")
    if not scheds or any(n not in known for n in scheds):
        ap.error(f"--schedulers = {a.schedulers!r}: comma-separated, from {', '.join(known)}")
    for name, v in (("--jitter", a.jitter), ("--copies", a.copies), ("--requests", a.requests)):
        if v < (1 if name == "--requests" else 0):
            ap.error(f"{name} = {v}: must be {'positive' if name == '--requests' else '>= 0'}")
    if a.without_leave_cycles:
        real = tables.mapper_table
        tables.mapper_table = lambda *x, **kw: replace(real(*x, **kw), exit_leave_cycles=(), preempt_cycles=0,
                                                       merge_cycles=0)
    base = load_scenario(DEFAULT_SCENARIO)
    rng = np.random.default_rng(0)
    rows = []
    t0 = time.perf_counter()
    spread = {}
    for k in loads:
        for seed in seeds:
            for name in scheds:
                for c in range(a.copies + 1):
                    s = prepare(scale_rates(base, k), (name, known[name]), requests=a.requests, seed=seed)
                    if c:
                        s = _jittered(s, rng, a.jitter)
                    m = run_model(s)
                    e = metric_errors(m, run_tables(s, "fluid"))
                    rows.append((k, seed, name, c, e["mean_ms"], e["p99_ms"], e["slo_attainment"]))
                    spread.setdefault((k, seed, name), []).append(m.result.summary()["p99_ms"] * 1e3)
    drawn = [r for r in rows if r[3] == 0]
    print(f"{len(drawn)} drawn traces: {_ranges(drawn)}")
    print(f"with {a.copies} copies each, arrivals moved by up to +-{a.jitter} cycles ({len(rows)} runs): "
          f"{_ranges(rows)}")
    out = [r for r in rows if abs(r[5]) > 0.20]
    print(f"p99 off by more than 20 %: {len(out)} of {len(rows)} runs")
    for k, seed, name, c, m, p, slo in out:
        print(f"  load {k:g} seed {seed} {name} {'drawn' if c == 0 else f'copy {c}'}: "
              f"mean {100 * m:+.1f} %, p99 {100 * p:+.1f} %, SLO {slo:+.3f}")
    if a.copies:
        (k, seed, name), p = max(spread.items(), key=lambda kv: max(kv[1]) / min(kv[1]))
        print(f"widest FBE-mode p99 over the copies: load {k:g} seed {seed} {name}, {min(p):.0f} to {max(p):.0f} us")
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        sys.exit(main())
