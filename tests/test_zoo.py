"""The model zoo: every model loads, MAC counts match the published figures, exits sit
where docs/models.md says, and the shipped CSVs are what the generator builds."""
import math

import pytest

from fluidnpu.sim.workloads import (EEModel, WorkloadError, load_model, model_to_toml, read_topology,
                                    resolve_model, zoo, zoogen)
from fluidnpu.sim.workloads.loader import model_from_dict

import tomllib

EXPECTED = {"tiny", "digits", "resnet18", "resnet50", "mobilenetv2", "vgg16", "b-alexnet", "msdnet"}

# Published multiply-accumulate counts per 224x224 image (convolutions + FC layers).
PUBLISHED_MACS = {
    "resnet18": (1.814e9, 0.02),     # torchvision 1.81 GMACs; He et al. 2016 Table 1: 1.8e9
    "resnet50": (4.09e9, 0.02),      # torchvision (v1.5) 4.09 GMACs; v1 in He et al. is 3.8e9
    "mobilenetv2": (300e6, 0.03),    # Sandler et al. 2018 Table 3: 300M multiply-adds
    "vgg16": (15.47e9, 0.02),        # torchvision 15.47 GMACs
}

# exit -> (backbone layer name, head input channels) as documented in docs/models.md
EXITS = {
    "resnet18": [("layer1.1.conv2", 64), ("layer2.1.conv2", 128), ("layer3.1.conv2", 256)],
    "resnet50": [("layer1.2.conv3", 256), ("layer2.3.conv3", 512), ("layer3.5.conv3", 1024)],
    "mobilenetv2": [("features.3.project", 24), ("features.10.project", 64), ("features.13.project", 96)],
    "vgg16": [("conv2_2", 128), ("conv3_3", 256), ("conv4_3", 512)],
    "b-alexnet": [("conv2", 64), ("conv3", 96)],
    "msdnet": [(f"block{i}.conv4", 256) for i in range(1, 5)],
    "digits": [("conv1", 8), ("conv2", 16)],
    "tiny": [("l1", 32)],
}


@pytest.fixture(scope="module")
def models():
    return {n: zoo.load(n) for n in zoo.names()}


def test_names():
    assert set(zoo.names()) == EXPECTED
    assert zoo.names() == sorted(zoo.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_model_loads_and_is_consistent(models, name):
    m = models[name]
    assert isinstance(m, EEModel) and m.name == name
    assert math.isclose(sum(m.exit_probs), 1.0, abs_tol=1e-9) and min(m.exit_probs) >= 0
    assert m.source, "every zoo model says where its exit rates come from"
    costs = [m.macs_to_exit(i) for i in range(m.n_exits)]
    assert costs == sorted(costs) and costs[-1] == m.backbone_macs + sum(e.macs for e in m.exits)
    assert costs[0] <= m.expected_macs() <= costs[-1]
    assert len({l.name for l in m.layers}) == len(m.layers)


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_backbone_macs_match_published_figures(models, name):
    ref, tol = PUBLISHED_MACS[name]
    assert abs(models[name].backbone_macs - ref) / ref < tol


def test_resnet50_is_the_torchvision_v15_layout(models):
    # v1.5 puts the stride on the 3x3 conv: layer2.0.conv2 reads 56x56 and writes 28x28
    l = models["resnet50"].layers[models["resnet50"].layer_index("layer2.0.conv2")]
    assert (l.r, l.p, l.c) == (28 * 28, 9 * 128, 128)


@pytest.mark.parametrize("name", sorted(EXITS))
def test_exits_are_placed_as_documented(models, name):
    m = models[name]
    assert [m.layers[e.after].name for e in m.exits] == [a for a, _ in EXITS[name]]
    assert [m.layers[e.after].c for e in m.exits] == [c for _, c in EXITS[name]]
    assert m.exit_layer(len(m.exits)) == len(m.layers) - 1


@pytest.mark.parametrize("name, classes", [("resnet18", 1000), ("resnet50", 1000), ("mobilenetv2", 1000)])
def test_pool_fc_heads(models, name, classes):
    for e, (_, ch) in zip(models[name].exits, EXITS[name]):
        (fc,) = e.layers
        assert (fc.r, fc.p, fc.c) == (1, ch, classes)


def test_b_alexnet_matches_the_branchynet_code(models):
    m = models["b-alexnet"]
    # Linear input sizes in the authors' code: 1024 (main), 512 (branch 1), 128 (branch 2)
    assert m.layers[m.layer_index("fc1")].p == 1024
    assert [e.layers[-1].p for e in m.exits] == [512, 128]
    assert all(e.layers[-1].c == 10 for e in m.exits) and m.layers[-1].c == 10
    hand = (32 * 32 * 5 * 5 * 3 * 32 + 16 * 16 * 5 * 5 * 32 * 64 + 8 * 8 * 9 * 64 * 96 + 8 * 8 * 9 * 96 * 96
            + 8 * 8 * 9 * 96 * 64 + 1024 * 256 + 256 * 128 + 128 * 10)
    assert m.backbone_macs == hand
    assert m.exit_probs == pytest.approx((0.656, 0.252, 0.092))


def test_mobilenetv2_depthwise_layers(models):
    dws = [l for l in models["mobilenetv2"].layers if l.name.endswith(".dw")]
    assert len(dws) == 17
    assert all(l.groups == l.c and l.p == 9 for l in dws)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "msdnet"])
def test_channels_chain_through_the_backbone(name):
    rows = read_topology(zoo.ZOO_DIR / f"{name}.csv")
    main = [r for r in rows if not r.name.endswith("downsample")]
    for prev, row in zip(main, main[1:]):
        assert row.channels == prev.num_filter, row.name
    for r in rows:
        if r.name.endswith("downsample"):     # the shortcut matches its block's output
            block = r.name.rsplit(".", 1)[0]
            last = [x for x in main if x.name.startswith(block + ".")][-1]
            assert r.num_filter == last.num_filter and r.to_layer().r == last.to_layer().r


def test_msdnet_heads_and_rates(models):
    m = models["msdnet"]
    assert len(m.exits) == 4 and all(len(e.layers) == 3 for e in m.exits)
    # the final exit's classifier is the same MSDNet classifier as the early heads
    assert [(l.r, l.p, l.c) for l in m.layers[-3:]] == [(l.r, l.p, l.c) for l in m.exits[0].layers]
    assert m.conditional_exit_prob(0) == pytest.approx(0.40)
    assert m.conditional_exit_prob(3) == pytest.approx(0.30)


def test_geometric_defaults(models):
    q = models["resnet18"].exit_probs
    assert all(b / a == pytest.approx(1.5) for a, b in zip(q, q[1:]))


def test_tiny_carries_rtl_fields(models):
    m = models["tiny"]
    assert [(l.relu, l.mult, l.shift) for l in m.layers] == [(True, 1, 8)] * 3 + [(False, None, None)]
    assert models["digits"].layers[0].relu and not models["digits"].layers[-1].relu


def test_shipped_csvs_match_the_generator():
    assert zoogen.check_zoo() == []


def test_every_shipped_csv_is_used_by_a_model():
    used = set()
    for n in zoo.names():
        data = tomllib.loads(zoo.path(n).read_text())
        used.add(data["model"].get("topology"))
        used |= {e.get("topology") for e in data.get("exits", [])}
    assert {p.name for p in zoo.ZOO_DIR.glob("*.csv")} <= used


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_writer_round_trip_of_zoo_models(models, name):
    m = models[name]
    assert model_from_dict(tomllib.loads(model_to_toml(m))) == m


def test_resolve_model(tmp_path, models):
    assert resolve_model("tiny") == models["tiny"]
    assert resolve_model(zoo.path("digits")) == models["digits"]
    assert resolve_model(str(zoo.path("digits"))) == models["digits"]
    assert resolve_model(models["tiny"]) is models["tiny"]
    with pytest.raises(WorkloadError) as ei:
        resolve_model("resnet-18")
    assert "'resnet-18'" in str(ei.value) and "resnet18" in str(ei.value) and "tiny" in str(ei.value)
    with pytest.raises(WorkloadError, match="no such model file"):
        resolve_model(tmp_path / "missing.toml")
    with pytest.raises(WorkloadError, match="valid names"):
        zoo.load("nope")


def test_a_copied_zoo_file_loads_from_elsewhere(tmp_path):
    # the paths inside a model file are relative to it, so a copied pair of files works
    for f in ("b-alexnet.toml", "b-alexnet.csv", "b-alexnet-branch1.csv", "b-alexnet-branch2.csv"):
        (tmp_path / f).write_text((zoo.ZOO_DIR / f).read_text())
    assert load_model(tmp_path / "b-alexnet.toml") == zoo.load("b-alexnet")
