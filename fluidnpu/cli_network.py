"""``fluidnpu network``: run an early-exit network's samples through the RTL NPU with its
Fluid Batching Engine, check each against the numpy reference, print exits, classes and
completion cycles (docs/fbe.md)."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import click
import numpy as np

from fluidnpu.cli import _config_options, _load_config, main

__all__ = ["network_cmd", "read_schedule"]


def read_schedule(path: Path, n: int) -> list[int]:
    """A batch-schedule CSV: rows ``cycle,sample`` (header optional) -> arrival cycle per
    sample; every sample 0..n-1 exactly once."""
    arr = [None] * n
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip() or row[0].strip().startswith("#"):
                continue
            if lineno == 1 and not row[0].strip().lstrip("-").isdigit():
                continue                                    # header
            if len(row) < 2:
                raise click.UsageError(f"{path}:{lineno}: expected 'cycle,sample', got {','.join(row)!r}")
            try:
                cyc, smp = int(row[0]), int(row[1])
            except ValueError:
                raise click.UsageError(f"{path}:{lineno}: cycle and sample must be integers, got "
                                       f"{row[0]!r}, {row[1]!r}") from None
            if cyc < 0:
                raise click.UsageError(f"{path}:{lineno}: cycle = {cyc}: must be >= 0")
            if not 0 <= smp < n:
                raise click.UsageError(f"{path}:{lineno}: sample = {smp}: must be from 0 to {n - 1}")
            if arr[smp] is not None:
                raise click.UsageError(f"{path}:{lineno}: sample {smp} is scheduled twice")
            arr[smp] = cyc
    missing = [i for i, a in enumerate(arr) if a is None]
    if missing:
        raise click.UsageError(f"{path}: samples without an arrival: {missing[:10]}"
                               f"{' ...' if len(missing) > 10 else ''}")
    return arr


def _inputs(net, inputs: Path | None, limit: int | None, shape):
    labels = None
    if inputs is None:
        if "test:x" not in net.weights:
            raise click.UsageError("--inputs is needed: the model ships no test inputs ('test:x')")
        xs = np.asarray(net.weights["test:x"])
        labels = np.asarray(net.weights["test:y"]) if "test:y" in net.weights else None
    else:
        try:
            xs = np.load(inputs)
        except (OSError, ValueError) as e:
            raise click.UsageError(f"--inputs {inputs}: not a readable .npy file ({e})") from None
    r0, p0 = shape
    if xs.ndim == 2 and xs.shape[1] == r0 * p0:
        xs = xs.reshape(-1, r0, p0)
    if xs.ndim != 3 or xs.shape[1:] != (r0, p0):
        raise click.UsageError(f"--inputs: shape {xs.shape}: must be (N, {r0 * p0}) or (N, {r0}, {p0}) "
                               f"for the first layer (r = {r0}, p = {p0})")
    if xs.dtype.kind not in "iu" or xs.min() < -128 or xs.max() > 127:
        raise click.UsageError("--inputs: must hold integers from -128 to 127")
    if limit is not None:
        xs = xs[:limit]
        labels = None if labels is None else labels[:limit]
    return xs.astype(np.int64), labels


@main.command("network")
@_config_options
@click.option("--model", "model_ref", required=True, help="Zoo name or model TOML with weights and exit thresholds.")
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Samples, int8 .npy of shape (N, r*p) or (N, r, p) [default: the model's shipped test inputs].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N samples.")
@click.option("--batch-schedule", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV of 'cycle,sample' arrivals [default: all samples at cycle 0].")
@click.option("--policy", type=click.Choice(["auto", "rbatch", "whole"]), default="auto", show_default=True,
              help="Control table: the mapper's best policy per (batch, layer) (auto: fluid hardware; rbatch: "
                   "B_P = k = 1) or the whole batch at (1, 1).")
@click.option("--sim", type=click.Choice(["icarus", "verilator"]), default="verilator", show_default=True)
@click.option("--latency", type=click.IntRange(min=1), default=20, show_default=True, help="Memory latency, cycles.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test scheduler's preempt sizes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def network_cmd(config_path, sets, model_ref, inputs, limit, batch_schedule, policy, sim, latency, seed, as_json):
    """Run samples through the RTL NPU with its FBE: per sample the exit, class and
    completion cycle, checked bit-exactly against the numpy reference."""
    from fluidnpu.hw.config import ConfigError
    from fluidnpu.hw.runner import MemTiming, SimError
    from fluidnpu.sim.netrun import run_samples
    from fluidnpu.sim.network import NetworkError, compile_network
    from fluidnpu.sim.workloads.errors import WorkloadError
    from fluidnpu.sim.workloads.weights import load_network

    try:
        cfg = _load_config(config_path, sets)
        net = load_network(model_ref)
        l0 = net.model.layers[0]
        xs, labels = _inputs(net, inputs, limit, (l0.r, l0.p))
        arrivals = read_schedule(batch_schedule, len(xs)) if batch_schedule else [0] * len(xs)
        prog = compile_network(cfg, net.model, net.weights, net.thresholds, net.criteria,
                               n_inputs=len(xs), tag_space=len(xs))
    except (ConfigError, WorkloadError, NetworkError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    policies = {}
    mem = MemTiming(latency=latency)
    if policy != "whole":
        from fluidnpu.sched.mapper import map_model
        plan = map_model(cfg, net.model, hardware="fluid" if policy == "auto" else "rbatch", b_max=cfg.b_max,
                         mem=mem)
        for b, lid, _name, br, bp, k, _cyc in plan.table_rows():
            policies[(b, lid)] = (br, bp, k)
    if not as_json:
        click.echo(f"{len(xs)} samples of {net.model.name} on the RTL ({sim}), b_max = {cfg.b_max} ...", err=True)
    try:
        outs, run, refs = run_samples(prog, list(xs), arrivals, sim=sim, mem=mem, policies=policies,
                                      sched={"mode": "greedy", "seed": seed, "odd": 0.0, "gap": 0})
    except (SimError, AssertionError) as e:
        click.echo(f"error: {e}", err=True)
        click.get_current_context().exit(1)
    names = [f"exit{i}" for i in range(len(net.model.exits))] + ["final"]
    per = []
    for o in outs:
        d = {"sample": o.index, "arrival": arrivals[o.index], "exit": o.exit, "exit_name": names[o.exit],
             "class": o.cls, "completion_cycle": o.cycle}
        if labels is not None:
            d["label"] = int(labels[o.index])
            d["correct"] = bool(o.cls == labels[o.index])
        per.append(d)
    counts = Counter(o.exit for o in outs)
    kinds = Counter(e["kind"] for e in run.events)
    lat = [o.cycle - arrivals[o.index] for o in outs]
    totals = {"samples": len(outs), "cycles": max(o.cycle for o in outs) + 1,
              "exits": {names[i]: counts.get(i, 0) for i in range(len(names))},
              "mean_latency_cycles": float(np.mean(lat)), "max_latency_cycles": int(max(lat)),
              "layers_run": kinds["layer_start"], "merges": kinds["merge"], "catchups": kinds["accept"] - kinds["idle"],
              "reference_match": True}
    if labels is not None:
        totals["accuracy"] = sum(d["correct"] for d in per) / len(per)
    if as_json:
        click.echo(json.dumps({"model": net.model.name, "sim": sim, "config": cfg.key(), "samples": per,
                               "totals": totals}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{net.model.name}: {len(outs)} samples, all equal to the numpy reference")
    for h in ("sample", "arrival", "exit", "class", "label", "done at cycle"):
        t.add_column(h, justify="right")
    for d in per[:40]:
        t.add_row(str(d["sample"]), str(d["arrival"]), d["exit_name"], str(d["class"]),
                  str(d.get("label", "-")), str(d["completion_cycle"]))
    con = Console()
    con.print(t)
    if len(per) > 40:
        con.print(f"... {len(per) - 40} more (use --json for all)")
    ex = ", ".join(f"{k} {v}" for k, v in totals["exits"].items())
    acc = f", accuracy {100 * totals['accuracy']:.2f} %" if labels is not None else ""
    con.print(f"{totals['cycles']} cycles; exits: {ex}; mean latency {totals['mean_latency_cycles']:.0f} cycles; "
              f"{totals['merges']} merges{acc}")
