"""Co-simulation: every scheduler that the FBE can carry out drives the RTL on one trace;
the serving simulator's FBE mode serves the same trace; agreement and speed.

    python benchmarks/bench_cosim.py [--requests 200] [--seed 1] [--sim verilator|icarus]
                                     [--scenario S.toml] [--loads 1.0,1.5]

Prints per scheduler (and load factor: every device rate times it) the agreement, the
served requests, mean and p99 latency (us), SLO attainment, utilisation, mean batch,
preemptions, merges, RTL cycles, wall seconds of the RTL run and of the model run, and
the RTL's simulated cycles per second, and the error of the default serving simulator
(mapper tables, fluid hardware) on the same trace against the RTL: mean and p99 latency
(relative) and SLO attainment (absolute). The tables in docs/cosim.md come from here.
"""
from __future__ import annotations

import argparse
import sys

from fluidnpu.sim.cosim.run import DEFAULT_SCENARIO, agreement, metric_errors, prepare, run_model, run_rtl, run_tables
from fluidnpu.sim.serving import load_scenario, scale_rates

SCHEDULERS = [("fluid", {}), ("lazy", {}), ("fcfs", {}), ("clipper", {}), ("dynamic", {"max_delay_ms": 0.01})]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    ap.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    ap.add_argument("--loads", default="1.0", help="comma-separated factors on every device's rate")
    a = ap.parse_args(argv)
    base = load_scenario(a.scenario)
    print("| load | scheduler | agreement | served | mean us | p99 us | SLO | util | batch | preempt | merges "
          "| RTL cycles | RTL s | model s | cycles/s | tables: mean | tables: p99 | tables: SLO |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for k in (float(x) for x in a.loads.split(",")):
        sc = scale_rates(base, k)
        for name, kn in SCHEDULERS:
            s = prepare(sc, (name, kn), requests=a.requests, seed=a.seed)
            m = run_model(s)
            r = run_rtl(s, a.sim)
            ag = agreement(m, r)
            e = metric_errors(r, run_tables(s, "fluid"))
            bad += ag["mismatches"]
            x = r.result.summary()
            label = name + (f" ({', '.join(f'{kk}={v}' for kk, v in kn.items())})" if kn else "")
            print(f"| {k:g} | {label} | {ag['agreement']:.4f} | {x['served']} | {x['mean_ms'] * 1e3:.2f} | "
                  f"{x['p99_ms'] * 1e3:.2f} | {x['slo_attainment']:.3f} | {x['utilisation']:.3f} | "
                  f"{x['mean_batch_size']:.2f} | {x['preemptions']} | {x['merges']} | {r.cycles:,} | "
                  f"{r.wall_s:.1f} | {m.wall_s:.3f} | {r.extra['dut_cycles'] / r.wall_s:,.0f} | "
                  f"{100 * e['mean_ms']:+.1f} % | {100 * e['p99_ms']:+.1f} % | {e['slo_attainment']:+.3f} |", flush=True)
    print(f"mismatching requests in total: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        sys.exit(main())
