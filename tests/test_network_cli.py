"""`fluidnpu network`: the trained digits CNN on the RTL NPU with its FBE, checked against
the digits module's own integer reference (written independently of the FBE's)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.sim.workloads.digits import exit_decisions, integer_logits
from fluidnpu.sim.workloads.weights import load_network

SMALL_NET = ["--set", "tr=8", "--set", "x_buf_elems=4096", "--set", "w_buf_elems=2048",
             "--set", "b_max=8", "--set", "net_entries=8", "--set", "max_classes=16"]


@pytest.fixture(scope="module")
def digits():
    return load_network("digits")


def test_digits_subset_on_the_rtl(digits, tmp_path):
    """The first 24 test images (most leave at exit 0; image 16 takes exit 1), arriving in
    four waves so that catch-ups and merges happen: exit and class of every image equal
    the integer reference."""
    n = 24
    sched = tmp_path / "arrivals.csv"
    sched.write_text("cycle,sample\n" + "".join(f"{(i // 6) * 1500},{i}\n" for i in range(n)))
    r = CliRunner().invoke(main, ["network", "--model", "digits", "--limit", str(n), "--sim", "icarus",
                                  "--batch-schedule", str(sched), "--json", *SMALL_NET])
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
