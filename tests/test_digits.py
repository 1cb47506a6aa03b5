"""The digits early-exit CNN: the shipped integer model's figures, its exit rates, the
exit-test semantics, deterministic training, weights/threshold loader errors."""
import dataclasses
import json
import tomllib

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.sim.workloads import (WorkloadError, load_model, load_network, load_weights, model_from_dict,
                                    model_to_toml, zoo)
from fluidnpu.sim.workloads import digits as D
from fluidnpu.sim.workloads.weights import check_network


@pytest.fixture(scope="module")
def net():
    return load_network("digits")


@pytest.fixture(scope="module")
def meta(net):
    return net.model.meta["extra"]


@pytest.fixture(scope="module")
def int_logits(net):
    return D.integer_logits(net.model, net.weights, net.weights["test:x"])


def pct(v):
    return round(100 * v, 2)


# ------------------------------------------------------------------ the shipped model

def test_shipped_model_shape_and_files(net):
    m = net.model
    assert [(l.name, l.r, l.p, l.c) for l in m.layers] == [("conv1", 36, 16, 8), ("conv2", 6, 48, 16),
                                                           ("fc1", 1, 96, 64), ("fc2", 1, 64, 10)]
    assert [m.layers[e.after].name for e in m.exits] == ["conv1", "conv2"]
    assert all(l.mult is not None and l.relu for l in m.layers[:-1])
    assert net.criteria == ["margin", "margin"] and all(t > 0 for t in net.thresholds)
    check_network(m)
    assert net.weights["test:x"].dtype == np.int8 and net.weights["test:x"].shape == (540, 36 * 16)
    assert not net.weights["conv1:w"][9:].any()        # the 7 padding taps of conv1 are zero
    assert net.weights["conv1:w"].dtype == np.int8 and net.weights["conv1:b"].dtype == np.int32
    # the shipped inputs are the im2col of the shipped quantised images
    assert np.array_equal(net.weights["test:x"], D.im2col(net.weights["test:images"]))
    assert 3_000 <= m.backbone_macs + sum(e.macs for e in m.exits) <= 50_000


def test_shipped_integer_accuracy_is_what_the_toml_reports(net, meta, int_logits):
    y = net.weights["test:y"]
    ev = D.evaluate(int_logits, y, net.thresholds, net.criteria)
    assert ev["n"] == meta["test_images"] == 540
    assert ev["correct"] == meta["int_correct"]
    assert pct(ev["accuracy"]) == meta["int_accuracy"]
    assert [pct(a) for a in ev["exit_accuracy"]] == meta["int_exit_accuracy"]
    assert ev["counts"] == meta["exit_counts"]
    assert meta["int_accuracy"] >= 97.0


def test_shipped_integer_model_is_within_2_points_of_its_float_model(net, meta):
    f = D.float_logits(D.float_params(net.weights), net.weights["test:x"] / D.INPUT_SCALE)
    thr = meta["float_thresholds"]
    ev = D.evaluate(f, net.weights["test:y"], thr, net.criteria)
    assert pct(ev["accuracy"]) == meta["float_accuracy"]
    assert [pct(a) for a in ev["exit_accuracy"]] == meta["float_exit_accuracy"]
    assert abs(meta["float_accuracy"] - meta["int_accuracy"]) <= 2.0
    for fa, ia in zip(meta["float_exit_accuracy"], meta["int_exit_accuracy"]):
        assert abs(fa - ia) <= 2.0
    # the early exits cost little accuracy: within 1 point of the final exit alone
    assert meta["int_accuracy"] >= meta["int_exit_accuracy"][-1] - 1.0


def test_float_evaluation_reproduces_the_training_figures(net, meta):
    """float_evaluation (what `fluidnpu network` reports beside the RTL) gives the float
    figures recorded at training time; a network without the float arrays gives None."""
    ev = D.float_evaluation(net.model, net.weights, net.weights["test:x"], net.weights["test:y"], net.thresholds,
                            net.criteria)
    assert pct(ev["accuracy"]) == meta["float_accuracy"] and ev["counts"] == meta["float_exit_counts"]
    bare = {k: v for k, v in net.weights.items() if not k.startswith("float:")}
    assert D.float_evaluation(net.model, bare, net.weights["test:x"], net.weights["test:y"], net.thresholds,
                              net.criteria) is None


def test_exit_rates_in_the_toml_are_the_measured_ones(net, int_logits):
    exit_at, _ = D.exit_decisions(int_logits, net.thresholds, net.criteria)
    counts = np.bincount(exit_at, minlength=3)
    assert net.model.exit_probs == pytest.approx(tuple(counts / len(exit_at)), abs=1e-12)
    assert "measured" in net.model.source and str(counts.tolist()) in net.model.source
    data = tomllib.loads(zoo.path("digits").read_text())
    assert set(data["exit_rates"]) == {"probs", "source"}


def test_integer_reference_equals_per_sample_gemms(net, int_logits):
    """Stacking the samples along R changes nothing: sample by sample, layer by layer."""
    cfg, m, w = HwConfig(), net.model, net.weights

    def layer(key, l, a):
        y = gemm_reference(cfg, a.reshape(l.r, l.p), w[f"{key}:w"], w[f"{key}:b"],
                           out_mode=OUT_REQUANT if l.mult is not None else OUT_RAW,
                           mult=l.mult or 1, shift=l.shift or 0, relu=l.relu)
        assert l.mult is None or (y.min() >= 0 and y.max() <= 127)
        return y.ravel()

    for s in (0, 7, 300):
        outs, a = [], net.weights["test:x"][s].astype(np.int64)
        for l in m.layers:
            a = layer(l.name, l, a)
            outs.append(a)
        heads = [layer(f"exit{i}.fc", e.layers[0], outs[e.after]) for i, e in enumerate(m.exits)]
        for got, batched in zip(heads + [outs[-1]], int_logits):
            assert np.array_equal(got, batched[s])


def test_requantising_the_shipped_float_model_gives_the_shipped_integer_model(net):
    pytest.importorskip("sklearn")
    parts = D.load_split(D.TrainConfig())
    assert np.array_equal(parts["test"][2], net.weights["test:index"])
    assert np.array_equal(parts["test"][1], net.weights["test:y"])
    w, lp, _ = D.quantise(D.float_params(net.weights), D.im2col(parts["train"][0]) / D.INPUT_SCALE)
    for k, a in w.items():
        assert np.array_equal(a, net.weights[k]), k
    m = net.model
    assert lp == {l.name: {"mult": l.mult, "shift": l.shift} for l in m.layers if l.mult is not None}


# ------------------------------------------------------------------- exit semantics

def test_exit_decisions_semantics():
    early = np.array([[5, 5, 1], [9, 2, 1], [3, 4, 0], [0, 0, 0]])
    final = np.array([[0, 1, 2], [0, 1, 2], [2, 2, 0], [0, 0, 7]])
    # margin: equal maxima give 0; lowest index on ties
    assert list(D.exit_scores(early, "margin")) == [0, 7, 1, 0]
    assert list(D.exit_scores(early, "max")) == [5, 9, 4, 0]
    at, pred = D.exit_decisions([early, final], [0], ["margin"])
    assert list(at) == [0, 0, 0, 0] and list(pred) == [0, 0, 1, 0]
    at, pred = D.exit_decisions([early, final], [1], ["margin"])
    assert list(at) == [1, 0, 0, 1] and list(pred) == [2, 0, 1, 2]
    at, pred = D.exit_decisions([early, final], [5], ["max"])
    assert list(at) == [0, 0, 1, 1] and list(pred) == [0, 0, 0, 2]
    # a sample taken by an earlier exit is not counted again by a later one
    at, _ = D.exit_decisions([early, early, final], [8, 0], ["max", "margin"])
    assert list(at) == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="criterion"):
        D.exit_scores(early, "entropy")


def test_im2col_is_the_3x3_valid_convolution():
    rng = np.random.default_rng(1)
    img = rng.integers(-5, 6, size=(2, 64))
    k = rng.integers(-3, 4, size=(3, 3))
    cols = D.im2col(img).reshape(2, 36, 16)
    assert not cols[:, :, 9:].any()
    out = cols[:, :, :9] @ k.ravel()
    im = img.reshape(2, 8, 8)
    ref = np.array([[sum(im[n, i + a, j + b] * k[a, b] for a in range(3) for b in range(3))
                     for i in range(6) for j in range(6)] for n in range(2)])
    assert np.array_equal(out, ref)


def test_fixed_point():
    mult, shift = D.fixed_point(0.0048)
    assert 16384 <= mult <= 32767 and abs(mult / 2 ** shift - 0.0048) / 0.0048 < 1e-4
    assert D.fixed_point(3.0) == (24576, 13)
    with pytest.raises(ValueError):
        D.fixed_point(0.0)


# ------------------------------------------------------------------------- training

SHORT = D.TrainConfig(epochs=3)


@pytest.fixture(scope="module")
def short_run():
    pytest.importorskip("sklearn")
    return D.train_digits(SHORT)


def test_training_is_deterministic(short_run):
    again = D.train_digits(SHORT)
    assert sorted(again.weights) == sorted(short_run.weights)
    for k in short_run.weights:
        assert np.array_equal(again.weights[k], short_run.weights[k]), k
    assert again.model == short_run.model and again.thresholds == short_run.thresholds
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("seconds")}   # noqa: E731
    assert strip(again.report) == strip(short_run.report)
    other = D.train_digits(dataclasses.replace(SHORT, seed=1))
    assert not np.array_equal(other.weights["fc1:w"], short_run.weights["fc1:w"])
    # the split does not depend on the seed
    assert np.array_equal(other.weights["test:index"], short_run.weights["test:index"])


def test_written_model_loads_back_with_the_reported_figures(short_run, tmp_path):
    toml, npz = D.write_model(short_run, tmp_path)
    net = load_network(toml)
    assert net.model == short_run.model and net.thresholds == short_run.thresholds
    ev = D.evaluate(D.integer_logits(net.model, net.weights, net.weights["test:x"]), net.weights["test:y"],
                    net.thresholds, net.criteria)
    assert ev == short_run.report["integer"]
    assert net.model.meta["extra"]["int_accuracy"] == pct(ev["accuracy"])
    first = npz.read_bytes()
    D.write_model(short_run, tmp_path)
    assert npz.read_bytes() == first          # byte-stable files


def test_cli_train_digits(tmp_path):
    pytest.importorskip("sklearn")
    res = CliRunner().invoke(zoo_cli(), ["train-digits", "--epochs", "2", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["epochs"] == 2 and out["test_images"] == 540
    assert [e["name"] for e in out["exits"]] == ["exit0", "exit1", "final"]
    assert sum(e["count"] for e in out["exits"]) == 540
    assert abs(sum(e["rate"] for e in out["exits"]) - 1) < 1e-12
    assert {p.rsplit("/", 1)[-1] for p in out["files"]} == {"digits.toml", "digits.npz"}
    net = load_network(tmp_path / "digits.toml")
    assert net.thresholds == [e["threshold"] for e in out["exits"][:2]]
    text = CliRunner().invoke(zoo_cli(), ["train-digits", "--epochs", "1", "--no-write"])
    assert text.exit_code == 0 and "early-exit accuracy" in text.output and "wrote" not in text.output


def zoo_cli():
    from fluidnpu.cli import main
    return main


# ------------------------------------------------------------------- loader errors

BASE = {
    "model": {"name": "n", "num_classes": 3, "layers": [
        {"name": "a", "r": 2, "p": 8, "c": 8, "relu": True, "mult": 3, "shift": 4},
        {"name": "b", "r": 1, "p": 16, "c": 3}]},
    "exits": [{"name": "e0", "after": "a", "layers": [{"name": "fc", "r": 1, "p": 16, "c": 3}],
               "threshold": 5}],
    "exit_rates": {"probs": [0.5, 0.5]},
}


def with_exit(**kw):
    d = json.loads(json.dumps(BASE))
    d["exits"][0].update(kw)
    for k, v in list(d["exits"][0].items()):
        if v is None:
            del d["exits"][0][k]
    return d


def test_threshold_and_criterion_load():
    m = model_from_dict(BASE, source="m.toml")
    assert (m.exits[0].threshold, m.exits[0].criterion) == (5, "margin")
    m = model_from_dict(with_exit(threshold=-3, criterion="max"))
    assert (m.exits[0].threshold, m.exits[0].criterion) == (-3, "max")
    m = model_from_dict(with_exit(threshold=None))
    assert (m.exits[0].threshold, m.exits[0].criterion) == (None, None)
    assert model_from_dict(tomllib.loads(model_to_toml(model_from_dict(BASE)))) == model_from_dict(BASE)


@pytest.mark.parametrize("kw, key, text", [
    ({"threshold": 1.5}, "exits[0].threshold", "must be an integer"),
    ({"threshold": True}, "exits[0].threshold", "must be an integer"),
    ({"threshold": "7"}, "exits[0].threshold", "must be an integer"),
    ({"threshold": 1 << 31}, "exits[0].threshold", "2147483647"),
    ({"threshold": -1}, "exits[0].threshold", ">= 0 for criterion 'margin'"),
    ({"criterion": "entropy"}, "exits[0].criterion", "allowed: margin, max"),
    ({"criterion": "max", "threshold": None}, "exits[0].criterion", "needs threshold"),
    ({"threshhold": 3}, "exits[0].threshhold", "unknown key"),
])
def test_bad_threshold_or_criterion(kw, key, text):
    with pytest.raises(WorkloadError) as ei:
        model_from_dict(with_exit(**kw), source="nets/m.toml")
    msg = str(ei.value)
    assert msg.startswith(f"nets/m.toml: {key} = ") and text in msg
    assert ei.value.field == key


def write_net(tmp_path, arrays, weights="w.npz", **exit_kw):
    d = with_exit(**exit_kw)
    d["model"]["weights"] = weights
    lines = [f'[model]\nname = "n"\nnum_classes = 3\nweights = "{weights}"\nlayers = [',
             '  { name = "a", r = 2, p = 8, c = 8, relu = true, mult = 3, shift = 4 },',
             '  { name = "b", r = 1, p = 16, c = 3 },', "]", "[[exits]]", 'name = "e0"', 'after = "a"',
             'layers = [ { name = "fc", r = 1, p = 16, c = 3 } ]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in d["exits"][0].items() if k in ("threshold", "criterion")]
    lines += ["[exit_rates]", "probs = [0.5, 0.5]"]
    (tmp_path / "n.toml").write_text("\n".join(lines) + "\n")
    if arrays is not None:
        np.savez(tmp_path / "w.npz", **arrays)
    return tmp_path / "n.toml"


def good_arrays():
    return {"a:w": np.ones((8, 8), np.int8), "a:b": np.zeros(8, np.int32), "b:w": np.ones((16, 3), np.int8),
            "e0.fc:w": np.ones((16, 3), np.int8), "test:x": np.zeros((2, 8), np.int8)}


def test_network_with_weights_loads_and_runs(tmp_path):
    net = load_network(write_net(tmp_path, good_arrays()))
    assert net.thresholds == [5] and net.criteria == ["margin"]
    assert net.model.meta["weights"] == str(tmp_path / "w.npz")
    lg = D.integer_logits(net.model, net.weights, np.ones((2, 16), np.int64))
    # a = requant(8 * 1 * 1 = 8, 3, 4) = round(24 / 16) = 2 (ties up) -> b: 16 twos -> 32 per class
    assert [l.tolist() for l in lg] == [[[32] * 3] * 2, [[32] * 3] * 2]


@pytest.mark.parametrize("change, key, text", [
    (lambda a: a.pop("b:w"), "b:w", "missing"),
    (lambda a: a.update({"a:w": np.ones((4, 8), np.int8)}), "a:w", "wrong shape; must be (8, 8)"),
    (lambda a: a.update({"a:w": np.ones((8, 8), np.float32)}), "a:w", "must be an integer array"),
    (lambda a: a.update({"a:w": np.full((8, 8), 128, np.int16)}), "a:w", "allowed: -128 to 127"),
    (lambda a: a.update({"a:b": np.zeros(3, np.int32)}), "a:b", "wrong shape"),
    (lambda a: a.update({"c:w": np.zeros((1, 1), np.int8)}), "c:w", "allowed: a:b, a:w, b:b"),
    (lambda a: a.update({"exit0.fc:w": np.zeros((16, 3), np.int8)}), "exit0.fc:w", "no layer"),
])
def test_bad_weights_file(tmp_path, change, key, text):
    arrays = good_arrays()
    change(arrays)
    with pytest.raises(WorkloadError) as ei:
        load_network(write_net(tmp_path, arrays))
    assert f"{key} = " in str(ei.value) and text in str(ei.value) and "w.npz" in str(ei.value)


def test_bad_weights_key(tmp_path):
    with pytest.raises(WorkloadError, match=r"model.weights = 'nope.npz': no such file"):
        load_model(write_net(tmp_path, None, weights="nope.npz"))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(WorkloadError, match=r"model.weights = 'w.txt': .*allowed suffix: .npz"):
        load_model(write_net(tmp_path, None, weights="w.txt"))
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(WorkloadError, match=r"model.weights = .*bad.npz.*cannot read"):
        load_network(write_net(tmp_path, None, weights="bad.npz"))
    with pytest.raises(WorkloadError, match=r"model.weights = None: missing"):
        load_network("tiny")


def test_network_needs_thresholds_and_a_runnable_chain(tmp_path):
    with pytest.raises(WorkloadError, match=r"exits\[0\].threshold = None: missing"):
        load_network(write_net(tmp_path, good_arrays(), threshold=None))
    m = load_model(write_net(tmp_path, good_arrays()))
    bad = dataclasses.replace(m, layers=(dataclasses.replace(m.layers[0], c=4, p=8, r=2),
                                         dataclasses.replace(m.layers[1], p=8)))
    with pytest.raises(WorkloadError, match=r"model.layers\[0\].c = 4: .*multiple of 8"):
        check_network(bad)
    bad = dataclasses.replace(m, layers=(dataclasses.replace(m.layers[0], p=4, r=4), m.layers[1]))
    with pytest.raises(WorkloadError, match=r"model.layers\[0\].p = 4: .*multiple of 8"):
        check_network(bad)
    bad = dataclasses.replace(m, layers=(dataclasses.replace(m.layers[0], mult=None, shift=None), m.layers[1]))
    with pytest.raises(WorkloadError, match=r"model.layers\[0\].mult = None: missing"):
        check_network(bad)
    bad = dataclasses.replace(m, layers=(m.layers[0], dataclasses.replace(m.layers[1], relu=True)))
    with pytest.raises(WorkloadError, match="classifier layer"):
        check_network(bad)
    bad = dataclasses.replace(m, layers=(m.layers[0], dataclasses.replace(m.layers[1], p=15)))
    with pytest.raises(WorkloadError, match=r"reads r \* p = 1 \* 15 = 15 values; its producer writes 16"):
        check_network(bad)


def test_digits_round_trips_through_the_writer(net):
    m = net.model
    again = model_from_dict(tomllib.loads(model_to_toml(m)))
    assert again == m and [e.threshold for e in again.exits] == net.thresholds
    assert load_weights(again).keys() == net.weights.keys()
