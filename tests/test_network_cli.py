"""`fluidnpu network`: the trained digits CNN on the RTL NPU with its FBE, checked against
the digits module's own integer reference (written independently of the FBE's)."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.cli_network import accuracy_report
from fluidnpu.hw.config import HwConfig
from fluidnpu.sim.netrun import SampleOutcome
from fluidnpu.sim.workloads.digits import exit_decisions, float_evaluation, integer_logits
from fluidnpu.sim.workloads.loader import load_model
from fluidnpu.sim.workloads.weights import load_network

ZOO = Path(__file__).parents[1] / "sim" / "workloads" / "zoo"

SMALL_NET = ["--set", "tc=4", "--set", "tp=4", "--set", "tr=8", "--set", "x_buf_elems=4096", "--set", "w_buf_elems=2048",
             "--set", "b_max=8", "--set", "net_entries=8", "--set", "max_classes=16"]


@pytest.fixture(scope="module")
def digits():
    return load_network("digits")


@pytest.mark.rtl
def test_digits_subset_on_the_rtl(digits, tmp_path):
    """The first 24 test images (most leave at exit 0; image 16 takes exit 1), arriving in
    four waves so that catch-ups and merges happen: exit and class of every image equal
    the integer reference."""
    n = 24
    sched = tmp_path / "arrivals.csv"
    sched.write_text("cycle,sample\n" + "".join(f"{(i // 6) * 1500},{i}\n" for i in range(n)))
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--limit", str(n), "--sim", "icarus",
                                  "--batch-schedule", str(sched), "--json", "--counts-out",
                                  str(tmp_path / "counts.json"), *SMALL_NET])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    x = np.asarray(digits.weights["test:x"])[:n]
    ex, pred = exit_decisions(integer_logits(digits.model, digits.weights, x), digits.thresholds,
                              digits.criteria)
    got = sorted(d["samples"], key=lambda s: s["sample"])
    assert [s["exit"] for s in got] == ex.tolist()
    assert [s["class"] for s in got] == pred.tolist()
    assert len(set(ex.tolist())) >= 2
    assert d["totals"]["merges"] >= 1
    labels = np.asarray(digits.weights["test:y"])[:n]
    assert d["totals"]["accuracy"] == pytest.approx(float(np.mean(pred == labels)))
    acc = d["totals"]["exit_accuracy"]
    assert acc["equal_to_reference"] and acc["rtl"] == acc["integer_reference"] == d["totals"]["accuracy"]
    assert [r["rtl"] for r in acc["exits"]] == [r["reference"] for r in acc["exits"]] == \
        [int(np.sum(ex == i)) for i in range(3)]
    flt = float_evaluation(digits.model, digits.weights, x, labels, digits.thresholds, digits.criteria)
    assert acc["float"] == flt["accuracy"] and [r["float"] for r in acc["exits"]] == flt["counts"]
    # the measured counts become the model file's exit rates
    toml = (ZOO / "digits.toml").read_text()
    start = toml.index("[exit_rates]")
    end = toml.index("\n[", start + 1)
    toml = toml[:start] + '[exit_rates]\nmeasured = "counts.json"\n' + toml[end:]
    (tmp_path / "digits.toml").write_text(toml.replace('weights = "digits.npz"', f'weights = "{ZOO / "digits.npz"}"'))
    m = load_model(tmp_path / "digits.toml")
    counts = [int(np.sum(ex == i)) for i in range(3)]
    assert m.exit_probs == pytest.approx([c / n for c in counts]) and "RTL" in m.source
    assert all(s["completion_cycle"] >= s["arrival"] for s in got)


@pytest.mark.parametrize("text, needle", [
    ("cycle,sample\n0,0\n0,0\n", "scheduled twice"),
    ("cycle,sample\n0,0\n", "without an arrival"),
    ("cycle,sample\nx,1\n0,0\n", "must be integers"),
    ("cycle,sample\n0,0\n-4,1\n", "must be >= 0"),
    ("cycle,sample\n0,0\n0,7\n", "from 0 to 1"),
])
def test_bad_batch_schedule(tmp_path, text, needle):
    f = tmp_path / "s.csv"
    f.write_text(text)
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--limit", "2", "--batch-schedule", str(f),
                                  *SMALL_NET])
    assert r.exit_code == 2 and needle in r.output, r.output


def test_bad_inputs_and_config(tmp_path):
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((3, 5), dtype=np.int8))
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--inputs", str(bad), *SMALL_NET])
    assert r.exit_code == 2 and "shape (3, 5)" in r.output, r.output
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--limit", "2", "--set", "max_classes=4",
                                  *SMALL_NET[:-2]])
    assert r.exit_code == 2 and "max_classes" in r.output, r.output
    r = CliRunner().invoke(main, ["network", "--model", "tiny"])
    assert r.exit_code == 2 and "weights" in r.output, r.output


def test_accuracy_report_against_the_reference(digits):
    """The per-exit report from outcomes equal to the integer reference, then from outcomes
    with one class changed: counts and accuracies follow, and the mismatch is flagged."""
    n = 60
    x = np.asarray(digits.weights["test:x"])[:n].astype(np.int64)
    labels = np.asarray(digits.weights["test:y"])[:n]
    ex, pred = exit_decisions(integer_logits(digits.model, digits.weights, x), digits.thresholds, digits.criteria)
    outs = [SampleOutcome(i, int(ex[i]), int(pred[i]), 0, None) for i in range(n)]
    names = ["exit0", "exit1", "final"]
    a = accuracy_report(digits, HwConfig(), x.reshape(n, 36, 16), labels, outs, names)
    assert a["equal_to_reference"] and a["rtl"] == pytest.approx(float(np.mean(pred == labels)))
    for i, r in enumerate(a["exits"]):
        at = ex == i
        assert r["rtl"] == r["reference"] == int(at.sum()) and r["rate"] == pytest.approx(at.mean())
        assert r["rtl_accuracy"] == (pytest.approx(float(np.mean(pred[at] == labels[at]))) if at.any() else None)
    assert a["float"] is not None and 0.9 < a["float"] <= 1.0
    j = int(np.flatnonzero(pred == labels)[0])
    outs[j] = SampleOutcome(j, int(ex[j]), (int(pred[j]) + 1) % 10, 0, None)
    b = accuracy_report(digits, HwConfig(), x.reshape(n, 36, 16), labels, outs, names)
    assert not b["equal_to_reference"] and b["rtl"] == pytest.approx(a["rtl"] - 1 / n)


def test_labels_option(tmp_path, digits):
    from fluidnpu.cli_network import _inputs
    x = np.asarray(digits.weights["test:x"])[:5]
    y = np.asarray(digits.weights["test:y"])[:5]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    xs, ls = _inputs(digits, tmp_path / "x.npy", tmp_path / "y.npy", 3, (36, 16))
    assert xs.shape == (3, 36, 16) and ls.tolist() == y[:3].tolist()
    np.save(tmp_path / "bad.npy", np.array([0, 1, 12, 3, 4]))
    for f, needle in (("bad.npy", "from 0 to 9"), ("x.npy", "one per input")):
        r = CliRunner().invoke(main, ["network", "--model", "digits", "--inputs", str(tmp_path / "x.npy"),
                                      "--labels", str(tmp_path / f), *SMALL_NET])
        assert r.exit_code == 2 and needle in r.output and "--labels" in r.output, r.output
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--labels", str(tmp_path / "y.npy"), *SMALL_NET])
    assert r.exit_code == 2 and "needs --inputs" in r.output, r.output


def test_counts_file_formats(tmp_path):
    """--counts-out writes JSON or CSV counts files that the model loader reads back, and
    refuses other suffixes before running anything."""
    from fluidnpu.cli_network import write_counts
    from fluidnpu.sim.workloads.exitrates import read_counts
    for name in ("c.json", "c.csv"):
        write_counts(tmp_path / name, [5, 0, 3], "measured here")
        counts, src = read_counts(tmp_path / name, 3)
        assert counts == (5, 0, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--limit", "2", "--counts-out",
                                  str(tmp_path / "c.txt"), *SMALL_NET])
    assert r.exit_code == 2 and "--counts-out" in r.output and ".json or .csv" in r.output, r.output
