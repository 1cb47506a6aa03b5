"""``fluidnpu network``: run an early-exit network's samples through the RTL NPU with its
Fluid Batching Engine, check each against the numpy reference, print exits, classes and
completion cycles (docs/fbe.md)."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import click
import numpy as np

from fluidnpu.cli_common import atomic_write, config_options, load_config
from fluidnpu.outputs import out_file

__all__ = ["network_cmd", "read_schedule"]


def read_schedule(path: Path, n: int) -> list[int]:
    """A batch-schedule CSV: rows ``cycle,sample`` (header optional) -> arrival cycle per
    sample; every sample 0..n-1 exactly once."""
    from fluidnpu.textfiles import TextFileError, read_text
    arr = [None] * n
    try:
        text = read_text(path)
    except (OSError, TextFileError) as e:
        raise click.UsageError(f"--batch-schedule {path}: {e.strerror}" if isinstance(e, OSError) else
                               f"--batch-schedule {e}") from None
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
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


def _inputs(net, inputs: Path | None, labels_path: Path | None, limit: int | None, shape):
    labels = None
    if inputs is None:
        if "test:x" not in net.weights:
            raise click.UsageError("--inputs is needed: the model ships no test inputs ('test:x')")
        if labels_path is not None:
            raise click.UsageError("--labels needs --inputs: the shipped test inputs come with their labels")
        xs = np.asarray(net.weights["test:x"])
        labels = np.asarray(net.weights["test:y"]) if "test:y" in net.weights else None
    else:
        xs = _npy(inputs, "--inputs")
    r0, p0 = shape
    given = xs.shape
    if xs.ndim == 2 and xs.shape[1] == r0 * p0:
        xs = xs.reshape(-1, r0, p0)
    if xs.ndim != 3 or xs.shape[1:] != (r0, p0):
        raise click.UsageError(f"--inputs: shape {xs.shape}: must be (N, {r0 * p0}) or (N, {r0}, {p0}) "
                               f"for the first layer (r = {r0}, p = {p0})")
    if len(xs) == 0:
        raise click.UsageError(f"--inputs {inputs}: shape {given}: holds no samples (N = 0); give at least one")
    if xs.dtype.kind not in "iu" or xs.min() < -128 or xs.max() > 127:
        raise click.UsageError("--inputs: must hold integers from -128 to 127")
    if labels_path is not None:
        labels = _npy(labels_path, "--labels")
        classes = net.model.layers[-1].c
        if labels.shape != (len(xs),) or labels.dtype.kind not in "iu" or labels.min() < 0 \
                or labels.max() >= classes:
            raise click.UsageError(f"--labels {labels_path}: shape {labels.shape}, dtype {labels.dtype}: must be "
                                   f"{len(xs)} integers (one per input) from 0 to {classes - 1}")
    if limit is not None:
        xs = xs[:limit]
        labels = None if labels is None else labels[:limit]
    return xs.astype(np.int64), labels


def _npy(path: Path, opt: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except EOFError:
        raise click.UsageError(f"{opt} {path}: not a readable .npy file (the file is empty or cut short)") from None
    except (OSError, ValueError) as e:
        raise click.UsageError(f"{opt} {path}: not a readable .npy file ({e})") from None
    if not isinstance(a, np.ndarray):
        raise click.UsageError(f"{opt} {path}: holds several arrays (.npz); give one .npy array")
    return a


def write_counts(path: Path, counts: list[int], source: str) -> None:
    """A counts file (docs/models.md, ``measured``): JSON or CSV by the suffix, written
    whole or not at all."""
    if path.suffix.lower() == ".json":
        text = json.dumps({"counts": [int(c) for c in counts], "source": source}, indent=1) + "\n"
    else:
        text = f"# {source}\nexit,count\n" + "".join(
            f"{'final' if i == len(counts) - 1 else i},{int(c)}\n" for i, c in enumerate(counts))
    atomic_write(path, text)


def accuracy_report(net, cfg, xs, labels, outs, names) -> dict:
    """Per exit: how many samples leave there and the accuracy of those, on the RTL, by the
    digits module's integer reference (written apart from the FBE's) and by the shipped
    float model when there is one; the overall accuracy of each."""
    from fluidnpu.sim.workloads.digits import evaluate, float_evaluation, integer_logits
    n = len(xs)
    flat = xs.reshape(n, -1)
    ref = evaluate(integer_logits(net.model, net.weights, flat, hw=cfg), labels, net.thresholds, net.criteria)
    flt = float_evaluation(net.model, net.weights, flat, labels, net.thresholds, net.criteria)
    ex = np.full(n, -1)
    ok = np.zeros(n, dtype=bool)
    for o in outs:
        ex[o.index], ok[o.index] = o.exit, o.cls == labels[o.index]
    rows = []
    for i, name in enumerate(names):
        at = ex == i
        row = {"exit": name, "rtl": int(at.sum()), "rate": float(at.mean()),
               "rtl_accuracy": float(ok[at].mean()) if at.any() else None,
               "reference": ref["counts"][i], "reference_accuracy": ref["taken_accuracy"][i],
               "reference_classifier_accuracy": ref["exit_accuracy"][i]}
        if flt is not None:
            row.update({"float": flt["counts"][i], "float_accuracy": flt["taken_accuracy"][i],
                        "float_classifier_accuracy": flt["exit_accuracy"][i]})
        rows.append(row)
    same = [r["rtl"] for r in rows] == ref["counts"] and int(ok.sum()) == ref["correct"]
    return {"exits": rows, "rtl": float(ok.mean()), "integer_reference": ref["accuracy"],
            "float": None if flt is None else flt["accuracy"], "equal_to_reference": bool(same)}


def _print_accuracy(con, acc):
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"
    has_float = acc["float"] is not None
    t = Table(title="exits and accuracy (accuracy of the samples that leave at each exit, %)")
    cols = ["exit", "RTL leave", "rate %", "RTL acc", "int ref leave", "int ref acc"]
    cols += ["float leave", "float acc"] if has_float else []
    for h in cols:
        t.add_column(h, justify="left" if h == "exit" else "right")
    for r in acc["exits"]:
        cells = [r["exit"], str(r["rtl"]), pct(r["rate"]), pct(r["rtl_accuracy"]), str(r["reference"]),
                 pct(r["reference_accuracy"])]
        cells += [str(r["float"]), pct(r["float_accuracy"])] if has_float else []
        t.add_row(*cells)
    con.print(t)
    flt = f"; float model {pct(acc['float'])} %" if has_float else ""
    con.print(f"accuracy: RTL {pct(acc['rtl'])} %, integer reference {pct(acc['integer_reference'])} %{flt}")


@click.command("network")
@config_options
@click.option("--model", "model_ref", required=True, help="Zoo name or model TOML with weights and exit thresholds.")
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Samples, int8 .npy of shape (N, r*p) or (N, r, p) [default: the model's shipped test inputs].")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Class labels of --inputs, an integer .npy of shape (N,): adds the accuracy per exit.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N samples.")
@click.option("--batch-schedule", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV of 'cycle,sample' arrivals [default: all samples at cycle 0].")
@click.option("--policy", type=click.Choice(["auto", "rbatch", "whole"]), default="auto", show_default=True,
              help="Control table: the mapper's best policy per (batch, layer) (auto: fluid hardware; rbatch: "
                   "B_P = k = 1) or the whole batch at (1, 1).")
@click.option("--sim", type=click.Choice(["icarus", "verilator"]), default="verilator", show_default=True)
@click.option("--latency", type=click.IntRange(min=1), default=20, show_default=True, help="Memory latency, cycles.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test scheduler's preempt sizes.")
@click.option("--counts-out", "counts_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=out_file,
              help="Write the exit counts measured on the RTL as a counts file (.json or .csv) that a model TOML's "
                   "[exit_rates] measured = \"FILE\" reads, so the serving simulator uses them.")
@click.option("--wave", type=click.Path(dir_okay=False, path_type=Path), callback=out_file,
              help="Record the run's waveform here (FST on Icarus, VCD on Verilator; the suffix follows the "
                   "simulator). Every signal for every cycle: keep --limit small.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def network_cmd(config_path, sets, model_ref, inputs, labels_path, limit, batch_schedule, policy, sim, latency, seed,
                counts_out, wave, as_json):
    """Run samples through the RTL NPU with its FBE: per sample the exit, class and
    completion cycle, checked bit-exactly against the numpy reference."""
    from fluidnpu.hw.config import ConfigError
    from fluidnpu.hw.runner import MemTiming, SimError
    from fluidnpu.sim.netrun import run_samples
    from fluidnpu.sim.network import NetworkError, compile_network
    from fluidnpu.sim.workloads.errors import WorkloadError
    from fluidnpu.sim.workloads.weights import load_network

    if counts_out is not None and counts_out.suffix.lower() not in (".json", ".csv"):
        raise click.UsageError(f"--counts-out {counts_out}: must end in .json or .csv (the counts file formats of "
                               f"[exit_rates] measured)")
    try:
        cfg = load_config(config_path, sets)
        net = load_network(model_ref)
        l0 = net.model.layers[0]
        xs, labels = _inputs(net, inputs, labels_path, limit, (l0.r, l0.p))
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
                                      sched={"mode": "greedy", "seed": seed, "odd": 0.0, "gap": 0}, wave=wave)
    except (SimError, AssertionError) as e:
        click.echo(f"error: {e}", err=True)
        from fluidnpu.hw.runner import recorded_wave
        w = recorded_wave(sim, wave)
        if w is not None:
            click.echo(f"waveform of the failing run: {w}", err=True)
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
              "reference_match": True, "wave": None if run.wave is None else str(run.wave)}
    acc = None
    if labels is not None:
        acc = accuracy_report(net, cfg, xs, labels, outs, names)
        totals["accuracy"] = acc["rtl"]
        totals["exit_accuracy"] = acc
    if counts_out is not None and (acc is None or acc["equal_to_reference"]):
        write_counts(counts_out, [totals["exits"][k] for k in names],
                     f"measured on the RTL NPU with its FBE: exit counts of {len(outs)} samples of "
                     f"{net.model.name} ({sim}; {cfg.key()})")
        totals["counts_file"] = str(counts_out)
    if as_json:
        click.echo(json.dumps({"model": net.model.name, "sim": sim, "config": cfg.key(), "samples": per,
                               "totals": totals}, indent=1))
    else:
        _print_samples(net, outs, per, totals, labels, acc)
    if acc is not None and not acc["equal_to_reference"]:
        click.echo("error: the RTL's exit counts or accuracy differ from the digits module's integer reference",
                   err=True)
        click.get_current_context().exit(1)


def _print_samples(net, outs, per, totals, labels, acc):
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
    acc_txt = f", accuracy {100 * totals['accuracy']:.2f} %" if labels is not None else ""
    con.print(f"{totals['cycles']} cycles; exits: {ex}; mean latency {totals['mean_latency_cycles']:.0f} cycles; "
              f"{totals['merges']} merges{acc_txt}")
    if acc is not None:
        _print_accuracy(con, acc)
    if totals["wave"]:
        con.print(f"wrote {totals['wave']}")
