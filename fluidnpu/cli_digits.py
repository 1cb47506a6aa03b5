"""``fluidnpu train-digits``: train, quantise and evaluate the digits early-exit CNN and
write its model files (docs/models.md, "The digits network")."""
from __future__ import annotations

import json
from pathlib import Path

import click

from fluidnpu.cli_common import need_extra
from fluidnpu.outputs import out_dir as _out_dir

__all__ = ["train_digits_cmd", "summary"]


def summary(res, files=()) -> dict:
    """The JSON object of ``train-digits --json``."""
    from fluidnpu.sim.workloads.digits import HEADS

    rep, m = res.report, res.model
    f, q = rep["float"], rep["integer"]
    names = [h[0] for h in HEADS] + ["final"]
    exits = []
    for i, name in enumerate(names):
        e = m.exits[i] if i < len(m.exits) else None
        exits.append({
            "name": name,
            "after": m.layers[m.exit_layer(i)].name,
            "macs_to_exit": rep["macs_to_exit"][i],
            "threshold": None if e is None else e.threshold,
            "criterion": None if e is None else e.criterion,
            "float_accuracy": f["exit_accuracy"][i],
            "int_accuracy": q["exit_accuracy"][i],
            "count": q["counts"][i],
            "rate": q["rates"][i],
            "taken_accuracy": q["taken_accuracy"][i],
            "float_count": f["counts"][i],
        })
    return {
        "seed": rep["seed"], "epochs": rep["epochs"],
        "train_seconds": rep["train_seconds"], "total_seconds": rep["total_seconds"],
        "split": rep["split"],
        "float_accuracy": f["accuracy"], "int_accuracy": q["accuracy"],
        "int_correct": q["correct"], "test_images": q["n"],
        "final_exit_float_accuracy": f["exit_accuracy"][-1], "final_exit_int_accuracy": q["exit_accuracy"][-1],
        "expected_macs": rep["expected_macs"], "backbone_macs": m.backbone_macs,
        "exits": exits,
        "layer_params": rep["layer_params"],
        "files": [str(p) for p in files],
    }


@click.command("train-digits")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/digits"),
              show_default=True, callback=_out_dir, help="Folder for digits.toml and digits.npz (sim/workloads/zoo rewrites the "
                                      "shipped model).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the weight initialisation and minibatch order (the split is fixed).")
@click.option("--epochs", type=click.IntRange(1, 100000), default=None,
              help="Training epochs [default: the shipped model's, 200].")
@click.option("--no-write", is_flag=True, help="Train and report only; write no files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def train_digits_cmd(out_dir, seed, epochs, no_write, as_json):
    """Train the digits early-exit CNN (numpy, scikit-learn's digits), quantise it to the
    NPU's int8 format, choose exit thresholds, report float vs integer accuracy and exit
    rates on the test split, and write the model TOML + weights."""
    import dataclasses

    need_extra("digits", "fluidnpu train-digits")
    from fluidnpu.sim.workloads.digits import TrainConfig, train_digits, write_model

    cfg = TrainConfig(seed=seed)
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    if not as_json:
        click.echo(f"training the digits early-exit CNN: seed {cfg.seed}, {cfg.epochs} epochs ...")
    res = train_digits(cfg)
    files = () if no_write else write_model(res, out_dir)
    out = summary(res, files)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    _print(out)


def _print(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    s = out["split"]
    t = Table(title=f"digits early-exit CNN: {out['test_images']} test images "
                    f"(trained on {s['fit']}, thresholds from {s['calib']} held-out training images)",
              header_style="bold")
    crit = next((e["criterion"] for e in out["exits"] if e["criterion"]), "margin")
    for col in ("exit", "after", "MACs", f"{crit} >=", "float %", "int %", "leave", "rate %", "their acc %"):
        t.add_column(col, justify="left" if col in ("exit", "after") else "right")
    for e in out["exits"]:
        t.add_row(e["name"], e["after"], f"{e['macs_to_exit']:,}", "-" if e["threshold"] is None else
                  str(e["threshold"]), pct(e["float_accuracy"]), pct(e["int_accuracy"]), str(e["count"]),
                  pct(e["rate"]), pct(e["taken_accuracy"]))
    con = Console()
    con.print(t)
    con.print(f"early-exit accuracy: float {pct(out['float_accuracy'])} %, integer {pct(out['int_accuracy'])} % "
              f"({out['int_correct']}/{out['test_images']}); final exit alone: float "
              f"{pct(out['final_exit_float_accuracy'])} %, integer {pct(out['final_exit_int_accuracy'])} %")
    con.print(f"expected MACs per image {out['expected_macs']:,.0f} (backbone {out['backbone_macs']:,}); "
              f"training {out['train_seconds']:.1f} s, total {out['total_seconds']:.1f} s")
    for p in out["files"]:
        con.print(f"wrote {p}")
