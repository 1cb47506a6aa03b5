"""Memory per simulated request: the figure behind ``--requests``' cap (docs/reliability.md).

    python benchmarks/bench_requests_memory.py [--small 200000] [--large 1000000]
                                               [--schedulers fluid,fcfs]

Runs ``fluidnpu serve --requests N --json`` (the default scenario) in a child process
at two sizes per scheduler and prints the peak resident memory of each and the slope,
bytes per request: (peak(large) - peak(small)) / (large - small). The mapping of the
models and the imports cost the same at both sizes, so the slope is what a request
costs: its draws, the simulator's per-request arrays and the result's columns.
``fluidnpu.sim.serving.scenario.BYTES_PER_REQUEST`` is this figure (rounded up).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def peak_kib(args: list[str]) -> tuple[int, float]:
    """Peak RSS (KiB) and wall time of one ``fluidnpu`` run in a fresh child process."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:                     # the child runs the command and reports its own peak
        os.execv(sys.executable, [sys.executable, "-m", "fluidnpu", *args])
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fluidnpu {' '.join(args)} failed")
    return usage.ru_maxrss, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=200_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--schedulers", default="fluid,fcfs")
    a = ap.parse_args(argv)
    assert resource.getrusage(resource.RUSAGE_SELF)  # Linux: ru_maxrss is in KiB
    for name in a.schedulers.split(","):
        res = {}
        for n in (a.small, a.large):
            with open(os.devnull, "w") as null:
                sys.stdout.flush()
                saved = os.dup(1)
                os.dup2(null.fileno(), 1)
                try:
                    res[n] = peak_kib(["serve", "--scheduler", name, "--requests", str(n), "--json"])
                finally:
                    os.dup2(saved, 1)
                    os.close(saved)
        (k0, t0), (k1, t1) = res[a.small], res[a.large]
        per = (k1 - k0) * 1024 / (a.large - a.small)
        print(f"{name:>8}: peak {k0 / 1024:,.0f} MiB at {a.small:,} requests ({t0:.1f} s), {k1 / 1024:,.0f} MiB at "
              f"{a.large:,} ({t1:.1f} s): {per:,.0f} bytes per request")


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        main()
