"""LatencyTable: validation, batch-1 latency, JSON round trip, the synthetic stand-in."""
import json

import numpy as np
import pytest

from fluidnpu.sim.latency import LatencyTable, LatencyTableError
from fluidnpu.sim.workloads.model import EEModel, ExitHead, GemmLayer


def model():
    layers = tuple(GemmLayer(f"l{i}", r=16, p=32 * (i + 1), c=8 * (i + 1)) for i in range(4))
    exits = (ExitHead(0, (GemmLayer("h0", 1, 8, 4),)), ExitHead(2, (GemmLayer("h1", 1, 24, 4),)))
    return EEModel("m", layers, exits, (0.3, 0.3, 0.4))


def table(**kw):
    lc = np.array([[0, 0, 0, 0], [10, 20, 30, 40], [15, 25, 35, 45]])
    hc = np.array([[0, 0], [3, 5], [4, 6]])
    args = dict(model="m", hardware="rbatch", clock_mhz=2.0, layer_cycles=lc, head_cycles=hc, head_after=(0, 2))
    args.update(kw)
    return LatencyTable(**args)


def test_batch1_latency_hand_computed():
    t = table()
    assert t.b_max == 2 and t.n_layers == 4 and t.n_heads == 2
    assert t.batch1_latency_cycles(0) == 10 + 3
    assert t.batch1_latency_cycles(1) == 10 + 20 + 30 + 3 + 5
    assert t.batch1_latency_cycles() == 100 + 8 == t.batch1_latency_cycles(2)
    assert t.batch1_latency_s() == pytest.approx(108 / 2e6)
    assert t.seconds(4) == pytest.approx(2e-6)
    with pytest.raises(LatencyTableError, match="exit_index = 3"):
        t.batch1_latency_cycles(3)
    # a sample leaving at a head pays that head's leave cycles; the full network has none
    u = table(exit_leave_cycles=(7, 9))
    assert u.exit_leave_cycles == (7, 9) and t.exit_leave_cycles == (0, 0)
    assert u.batch1_latency_cycles(0) == 10 + 3 + 7 and u.batch1_latency_cycles(1) == 68 + 9
    assert u.batch1_latency_cycles() == 108


@pytest.mark.parametrize("kw, match", [
    (dict(clock_mhz=0), "clock_mhz = 0"),
    (dict(layer_cycles=np.array([[0, 0, 0, 0], [10, 0, 30, 40], [1, 1, 1, 1]])), r"layer_cycles\[1, 1\] = 0"),
    (dict(head_cycles=np.array([[0, 0], [3, 5]])), "same rows"),
    (dict(head_after=(0,)), "one layer per head"),
    (dict(head_after=(2, 0)), "strictly increasing"),
    (dict(head_after=(0, 3)), r"head_after\[1\] = 3"),
    (dict(layer_cycles=np.array([1.5, 2.0])), "2-D"),
    (dict(preempt_cycles=-1), "preempt_cycles = -1"),
    (dict(peak_macs_per_cycle=0), "peak_macs_per_cycle = 0"),
    (dict(exit_leave_cycles=(3,)), r"exit_leave_cycles = \(3,\): must list one whole number of cycles per head \(2\)"),
    (dict(exit_leave_cycles=(3, -1)), r"exit_leave_cycles\[1\] = -1"),
    (dict(exit_leave_cycles=5), "exit_leave_cycles = 5"),
])
def test_validation_errors(kw, match):
    with pytest.raises(LatencyTableError, match=match):
        table(**kw)


def test_row_zero_ignored_and_read_only():
    lc = np.array([[7, 7, 7, 7], [10, 20, 30, 40], [15, 25, 35, 45]])
    t = table(layer_cycles=lc)
    assert t.layer_cycles[0].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        t.layer_cycles[1, 1] = 3


def test_json_round_trip(tmp_path):
    t = table(preempt_cycles=7, merge_cycles=3, peak_macs_per_cycle=64, source="unit test",
              exit_leave_cycles=(4, 5))
    p = tmp_path / "t.json"
    t.save(p)
    u = LatencyTable.load(p)
    assert u == t and u.source == "unit test" and u.preempt_cycles == 7 and u.exit_leave_cycles == (4, 5)
    assert u != table() and t != table(preempt_cycles=7, merge_cycles=3, peak_macs_per_cycle=64)
    d = json.loads(p.read_text())
    del d["exit_leave_cycles"]                  # files written before the field: no leave cycles
    p.write_text(json.dumps(d))
    assert LatencyTable.load(p).exit_leave_cycles == (0, 0)
    d = json.loads(p.read_text())
    d["format"] = "other"
    p.write_text(json.dumps(d))
    with pytest.raises(LatencyTableError, match="'format' = 'other'"):
        LatencyTable.load(p)
    p.write_text("{not json")
    with pytest.raises(LatencyTableError, match="line 1"):
        LatencyTable.load(p)


def test_check_model():
    m = model()
    t = table()
    t.check_model(m)
    bad = table(head_after=(1, 2))
    with pytest.raises(LatencyTableError, match="exits after layers"):
        bad.check_model(m)


def test_synthetic_stand_in():
    m = model()
    r = LatencyTable.synthetic(m, "rbatch", b_max=8)
    f = LatencyTable.synthetic(m, "fluid", b_max=8)
    r.check_model(m)
    assert r.hardware == "rbatch" and f.hardware == "fluid" and "stand-in" in r.source
    # fluid chooses among policies that include rbatch's, so never slower
    assert (f.layer_cycles <= r.layer_cycles).all() and (f.head_cycles <= r.head_cycles).all()
    # few output channels (c = 8 on 64 PEs): stackable PEs help on a compute-bound layer
    assert (f.layer_cycles[8] < r.layer_cycles[8]).any()
    # more samples never take fewer cycles; per-sample cost falls with batching
    assert (np.diff(r.layer_cycles[1:], axis=0) >= 0).all()
    tot = r.layer_cycles.sum(1)
    assert tot[8] / 8 < tot[1]
    with pytest.raises(LatencyTableError, match="variant = 'x'"):
        LatencyTable.synthetic(m, "x")
