"""Synthesis sweep: resources, Fmax and run time per configuration, as a markdown table.

    python benchmarks/bench_synth.py [--target ulx3s-85f] [--preset default|sweep|tiny]
                                     [--config 'tc=4,tp=8' ...] [--seed 1] [--json out.json]
                                     [--pack-only]

Each configuration is ``HwConfig()`` with the ``name=value`` overrides given. Results
are cached (fluidnpu.synth.flow), so re-running the table after a partial run only
synthesises what is new. The default configuration takes tens of minutes on the
ULX3S-85F (most of it in nextpnr); see docs/synthesis.md for the measured table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from fluidnpu.hw.config import HwConfig
from fluidnpu.synth.flow import synthesize
from fluidnpu.synth.result import format_table
from fluidnpu.synth.tools import SynthError

PRESETS = {
    "default": [""],
    # the design space around the default: PE count, lanes and buffer sizes
    "sweep": ["", "tc=8", "tp=8", "tc=8,tp=8,mem_bytes=8", "tc=16,tp=16,mem_bytes=8,w_buf_elems=16384",
              "x_buf_elems=8192,w_buf_elems=2048"],
    "tiny": ["tc=4,tp=4,tr=4,x_buf_elems=64,w_buf_elems=16,mem_bytes=4,addr_width=16,dim_width=8"],
}


def parse_config(text: str) -> HwConfig:
    items = [t.strip() for t in text.split(",") if t.strip()]
    return HwConfig().with_overrides(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="ulx3s-85f")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--config", action="append", default=None,
                    help="name=value,... overrides of HwConfig() (repeatable; replaces --preset)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target-mhz", type=float, default=None)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--pack-only", action="store_true",
                    help="resources and fit only (nextpnr --pack-only), no Fmax")
    ap.add_argument("--json", help="write all results to this JSON file")
    a = ap.parse_args(argv)
    specs = a.config if a.config else PRESETS[a.preset]
    results = []
    for spec in specs:
        cfg = parse_config(spec)
        t0 = time.monotonic()

        def progress(stage, msg, t0=t0):
            print(f"  [{time.monotonic() - t0:7.1f} s] {stage}: {msg}", file=sys.stderr, flush=True)

        print(f"{a.target}: {spec or 'default'}", file=sys.stderr, flush=True)
        try:
            r = synthesize(cfg, a.target, seed=a.seed, target_mhz=a.target_mhz,
                           progress=progress, use_cache=not a.no_cache,
                           pack_only=a.pack_only)
        except SynthError as e:
            print(f"  failed: {e}", file=sys.stderr)
            continue
        print(r.summary(), file=sys.stderr, flush=True)
        results.append(r)
    print(format_table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
    return 0 if len(results) == len(specs) else 1


if __name__ == "__main__":
    from fluidnpu.outputs import sigterm_as_interrupt
    with sigterm_as_interrupt():    # SIGTERM cleans up as Ctrl-C does: no simulator or run folder left
        sys.exit(main())
