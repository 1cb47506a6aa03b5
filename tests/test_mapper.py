"""Policy mapper, FBE/latency tables and the perf/ablation commands."""
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_REQUANT
from fluidnpu.sched.mapper import MapperError, map_model, plan_layer, policies_for
from fluidnpu.sim.cycle_model import layer_cycles
from fluidnpu.sim.workloads import GemmLayer, zoo

CFG = HwConfig(tc=8, tp=8, mem_bytes=8)     # the 8 x 8 core (examples/hw_8x8.toml)


def test_best_policy_is_the_minimum_over_all_policies():
    layer = GemmLayer("l", r=49, p=300, c=23)
    p = plan_layer(CFG, layer, 3)
    brute = min(layer_cycles(CFG, 3 * 49, 300, 23, bp=bp, k=k, bias=True, out_mode=OUT_REQUANT)
                for bp, k in CFG.policies)
    assert p.cycles <= brute
    assert p.policy[0] in (1, 2, 3)
    assert p.macs == 3 * 49 * 300 * 23
    assert 0 < p.utilisation <= 1


def test_hardware_variants_restrict_the_search():
    assert policies_for(CFG, "rbatch") == [(1, 1)]
    assert policies_for(CFG, "stack") == [(1, k) for k in CFG.k_choices]
    with pytest.raises(MapperError, match="hardware = 'gpu'"):
        policies_for(CFG, "gpu")
    m = zoo.load("tiny")
    for b in (1, 4):
        for L in m.layers:
            r, s, f = (plan_layer(CFG, L, b, hw) for hw in ("rbatch", "stack", "fluid"))
            assert r.policy[1:] == (1, 1) and s.policy[1] == 1
            assert f.cycles <= s.cycles <= r.cycles


def test_fixed_policy_and_its_errors():
    L = GemmLayer("l", r=10, p=64, c=16)
    p = plan_layer(CFG, L, 4, fixed=(2, 2, 4))
    assert p.policy == (2, 2, 4) and p.commands == 2
    assert p.cycles == 2 * layer_cycles(CFG, 20, 64, 16, bp=2, k=4, bias=True, out_mode=OUT_REQUANT)
    with pytest.raises(MapperError, match=r"\(B_P, k\) = \(3, 1\)"):
        plan_layer(CFG, L, 4, fixed=(1, 3, 1))
    with pytest.raises(MapperError, match="batch = 0"):
        plan_layer(CFG, L, 0)


def test_long_layers_split_at_the_descriptor_limit_and_groups_run_separately():
    big = GemmLayer("big", r=112 * 112, p=27, c=32)
    p = plan_layer(CFG, big, 8, fixed=(8, 8, 1))
    assert p.commands == 2                       # 100352 rows > 65535
    dw = GemmLayer("dw", r=100, p=9, c=32, groups=32)
    q = plan_layer(CFG, dw, 1, fixed=(1, 1, 8))
    assert q.commands == 32
    assert q.cycles == 32 * layer_cycles(CFG, 100, 9, 1, bp=1, k=8, bias=True, out_mode=OUT_REQUANT)


def test_plans_never_beat_their_rooflines():
    """Depthwise layers (many small groups) write as much as they read: with reads and
    writes added up, their roofline sat above their cycles (efficiency up to 1.29)."""
    dw = GemmLayer("dw", r=56 * 56, p=9, c=144, groups=144)
    for cfg in (HwConfig(), CFG):
        for b in (1, 8):
            p = plan_layer(cfg, dw, b)
            assert p.roofline_cycles <= p.roofline_cycles_tiled <= p.cycles + p.fbe_cycles
            assert 0.5 < p.roofline_efficiency <= 1


def test_tables_round_trip(tmp_path):
    m = zoo.load("tiny")
    plan = map_model(CFG, m, "fluid", b_max=4)
    files = {f.name for f in plan.write_tables(tmp_path)}
    assert files == {"fbe_table.bin", "fbe_table.csv", "latency_table.json", "latency_table.csv"}
    n_ids = len(m.layers) + sum(len(e.layers) for e in m.exits)
    img = (tmp_path / "fbe_table.bin").read_bytes()
    assert len(img) == 2 * 4 * n_ids
    rows = (tmp_path / "fbe_table.csv").read_text().splitlines()[1:]
    for word, row in zip(struct.iter_unpack("<H", img), rows):
        b, lid, name, br, bp, k, cyc = row.split(",")
        w = word[0]
        assert (w & 0xFF, 1 << (w >> 8 & 0xF), 1 << (w >> 12)) == (int(br), int(bp), int(k))
    tab = plan.latency_table()
    assert tab.layer_cycles.shape == (5, len(m.layers))
    assert tab.layer_cycles[3, 0] == plan.layers[2][0].total_cycles == plan.layers[2][0].cycles + plan.layers[2][0].fbe_cycles
    assert plan.layers[2][0].fbe_cycles == 5 + 3 + plan.layers[2][0].commands    # entry overhead at B = 3
    assert plan.exit_path_cycles(1)[-1] == sum(tab.layer_cycles[1]) + sum(tab.head_cycles[1])


def test_perf_json_and_errors(tmp_path):
    r = CliRunner().invoke(main, ["perf", "--model", "tiny", "--batch", "2", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"layers", "total_cycles"} <= set(d)
    for L in d["layers"]:
        assert {"name", "policy", "cycles", "utilisation", "roofline_efficiency"} <= set(L)
        assert len(L["policy"]) == 3
    assert d["total_cycles"] == sum(L["cycles"] for L in d["layers"]) + sum(
        p["cycles"] for h in d["heads"] for p in h)
    topo = tmp_path / "net.csv"
    topo.write_text("Layer, M, N, K,\nfc1, 4, 16, 32,\n")
    r = CliRunner().invoke(main, ["perf", "--topology", str(topo), "--policy", "rbatch", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["layers"][0]["policy"][1:] == [1, 1]
    for args, needle in ((["--model", "tiny", "--topology", str(topo)], "exactly one"),
                         (["--model", "nosuch"], "nosuch"),
                         (["--model", "tiny", "--policy", "fixed:1,2"], "fixed:BR,BP,K"),
                         (["--model", "tiny", "--policy", "fixed:1,3,1"], "(3, 1)")):
        r = CliRunner().invoke(main, ["perf", *args])
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output, (args, r.output)


def test_ablation_command():
    r = CliRunner().invoke(main, ["ablation", "--models", "tiny", "--batches", "1,8"])
    assert r.exit_code == 0, r.output
    rows = [l for l in r.output.splitlines() if l.startswith("| tiny")]
    assert [l.split("|")[2].strip() for l in rows] == ["rbatch", "stack", "fluid"]
    util = {l.split("|")[2].strip(): float(l.split("|")[4]) for l in rows}
    assert util["fluid"] >= util["stack"] >= util["rbatch"]
    r = CliRunner().invoke(main, ["ablation", "--models", "nosuch"])
    assert r.exit_code == 2 and "nosuch" in r.output
