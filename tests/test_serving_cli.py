"""fluidnpu serve / compare, the default scenario on the mapper's latency tables, compare specs, conservation."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.sched import names
from fluidnpu.sim.serving import ScenarioError, generate_requests, run, slo_bases
from fluidnpu.sim.serving.compare import (DEFAULT_SCENARIO, expected_batch1_s, load_with_spec, parse_compare,
                                          scaled_scenario, serving_tables, truncate_requests)
from fluidnpu.sim.serving.plan import ModelPlan


@pytest.fixture(scope="module")
def default():
    sc, spec = load_with_spec()
    return sc, spec, serving_tables(sc)


def _small_scenario(tmp_path: Path, compare: str) -> Path:
    text = DEFAULT_SCENARIO.read_text()
    text = text[:text.index("[compare]")] + compare
    p = tmp_path / "small.toml"
    p.write_text(text)
    return p


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- service times come from the mapper --------------------------------------------------
def test_default_tables_are_the_mappers(default):
    from fluidnpu.hw.config import HwConfig
    from fluidnpu.sched.mapper import map_model
    sc, _, tabs = default
    assert {m.name for m in sc.models} == set(tabs["rbatch"]) == set(tabs["fluid"])
    assert len(sc.models) >= 3 and len(sc.devices) >= 6
    for m in sc.models:
        for hw in ("rbatch", "fluid"):
            t = tabs[hw][m.name]
            assert t.hardware == hw and t.source.startswith("cycle model") and "synthetic" not in t.source
            assert t == map_model(HwConfig(), m, hw).latency_table()
    # cached in-process: the same objects come back
    assert serving_tables(sc)["fluid"]["mobilenetv2"] is tabs["fluid"]["mobilenetv2"]
    # fluid hardware is never slower, and strictly faster on MobileNetV2's depthwise layers
    mb = tabs["fluid"]["mobilenetv2"].batch1_latency_s()
    assert mb < 0.8 * tabs["rbatch"]["mobilenetv2"].batch1_latency_s()


def test_serve_on_another_hardware_configuration(repo_root):
    """--config/--set: the latency tables (so the latencies) are those of the given NPU."""
    base = _json(CliRunner().invoke(main, ["serve", "--requests", "400", "--json"]))
    big = _json(CliRunner().invoke(main, ["serve", "--requests", "400", "--json", "--config",
                                          str(repo_root / "examples" / "hw_8x8.toml")]))
    assert all("tc=4,tp=4," in src for src in base["tables"].values())
    assert all("tc=8,tp=8," in src for src in big["tables"].values())
    # 4x the MACs: the same arrivals leave the NPU less busy and are served sooner
    assert big["summary"]["utilisation"] < 0.6 * base["summary"]["utilisation"]
    assert big["summary"]["mean_ms"] < base["summary"]["mean_ms"]
    for cmd in (["serve", "--requests", "10"], ["compare", "--requests", "50"]):
        r = CliRunner().invoke(main, [*cmd, "--set", "tp=3"])
        assert r.exit_code == 2 and "tp = 3: must be a power of two" in r.output


def test_scaled_scenario_hits_the_load(default):
    sc, spec, tabs = default
    ref = tabs["rbatch"]
    for pattern in ("steady", "spiking"):
        s2 = scaled_scenario(sc, ref, 0.7, pattern, 5000, spec)
        work = sum(d.arrivals.mean_rate * expected_batch1_s(d.model, ref[d.model.name]) for d in s2.devices)
        assert work == pytest.approx(0.7)
        assert s2.mean_rate * s2.duration_s == pytest.approx(5000)
        base = [d.arrivals.mean_rate / sc.devices[i].arrivals.mean_rate for i, d in enumerate(s2.devices)]
        assert max(base) == pytest.approx(min(base))            # proportions kept
    reqs = generate_requests(s2, 1, slo_bases(s2, ref))
    assert len(truncate_requests(reqs, 1000)) == 1000


# -- conservation on the default scenario, every scheduler, both hardware variants -----------
@pytest.mark.parametrize("hw", ["rbatch", "fluid"])
@pytest.mark.parametrize("sched", sorted(names()))
def test_conservation_default_scenario(default, sched, hw):
    sc, spec, tabs = default
    ref = tabs["rbatch"]
    from dataclasses import replace
    s2 = replace(scaled_scenario(sc, ref, 0.9, "spiking", 1500, spec), queue_capacity=40)
    reqs = truncate_requests(generate_requests(s2, 2, slo_bases(s2, ref)), 1500)
    res = run(s2, sched, tabs[hw], 2, slo_reference=ref, requests=reqs, check=True)   # check: asserts as it runs
    done = res.done
    # every arrival either finished exactly once (at its drawn exit) or was dropped with a reason
    assert (done ^ (res.drop_reason != "")).all()
    assert set(res.drop_reason[~done]) <= {"queue_full"}
    assert np.array_equal(res.exit[done], reqs.exit[done])
    assert (res.arrival[done] <= res.start[done]).all() and (res.start[done] <= res.finish[done]).all()
    # the NPU runs one segment at a time, in time order (time never goes back)
    log = np.array([(a, b) for a, b, *_ in res.op_log])
    assert (log[:, 1] >= log[:, 0]).all() and (log[1:, 0] >= log[:-1, 1] - 1e-12).all()
    # sample-ops executed = the ops each finished request needs (no sample runs two layers at once or twice)
    plans = [ModelPlan(i, m, tabs[hw][m.name], 1.0) for i, m in enumerate(s2.models)]
    need = sum(plans[res.model[r]].exit_op[res.exit[r]] + 1 for r in np.flatnonzero(done))
    assert sum((p1 - p0) * s for _, _, _, p0, p1, s, _ in res.op_log) == need
    assert done.sum() > 0


# -- serve ----------------------------------------------------------------------------------
def test_serve_json_defaults_and_hardware(tmp_path):
    r = CliRunner()
    out = _json(r.invoke(main, ["serve", "--requests", "300", "--json", "--out", str(tmp_path / "s")]))
    for k in ("scenario", "scheduler", "knobs", "hardware", "seed", "requests", "tables", "summary", "per_device"):
        assert k in out
    assert out["scheduler"] == "fluid" and out["hardware"] == "fluid" and out["requests"] == 300
    assert all(v.startswith("cycle model, mapper (fluid)") for v in out["tables"].values())
    s = out["summary"]
    for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "slo_attainment", "slo_attainment_at", "throughput_rps",
              "utilisation", "preemptions", "batch_size_hist", "exits_per_head"):
        assert k in s
    assert 0 < s["requests"] <= 300 and s["served"] + s["dropped"] == s["requests"]
    rows = list(csv.DictReader((tmp_path / "s" / "requests.csv").open()))
    assert len(rows) == 300 and rows[0]["slo_met"] in ("0", "1")
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["requests"] == 300
    b = _json(r.invoke(main, ["serve", "--scheduler", "dynamic", "--requests", "300", "--json"]))
    assert b["hardware"] == "rbatch" and b["knobs"]["max_delay_ms"] == 1.0
    c = _json(r.invoke(main, ["serve", "--scheduler", "dynamic", "--hardware", "fluid", "--requests", "300",
                              "--json", "--seed", "4"]))
    assert c["hardware"] == "fluid" and c["seed"] == 4
    assert c["summary"]["mean_ms"] != b["summary"]["mean_ms"]


def test_serve_load_factor(tmp_path):
    """--load scales every device's rate: the same requests arrive over 1/K of the time;
    a bad factor or a trace scenario is an error naming it."""
    r = CliRunner()
    a = _json(r.invoke(main, ["serve", "--requests", "2000", "--json"]))
    b = _json(r.invoke(main, ["serve", "--requests", "2000", "--json", "--load", "0.5"]))
    assert a["load"] == 1.0 and b["load"] == 0.5
    ratio = b["summary"]["throughput_rps"] / a["summary"]["throughput_rps"]
    assert 0.4 < ratio < 0.6 and b["summary"]["utilisation"] < a["summary"]["utilisation"]
    bad = r.invoke(main, ["serve", "--requests", "50", "--load", "0"])
    assert bad.exit_code == 2 and "--load" in bad.output
    (tmp_path / "t.csv").write_text("timestamp,device\n0.001,d\n0.002,d\n")
    (tmp_path / "s.toml").write_text('name = "t"\nduration_s = 1\n[[device]]\nname = "d"\nmodel = "tiny"\n'
                                     'slo_ms = 5\narrivals = { kind = "trace", path = "t.csv" }\n')
    tr = r.invoke(main, ["serve", "--scenario", str(tmp_path / "s.toml"), "--load", "2"])
    assert tr.exit_code == 2 and "a trace has no rate to scale" in tr.output, tr.output


def test_serve_table_output():
    res = CliRunner().invoke(main, ["serve", "--scheduler", "prema", "--requests", "200"])
    assert res.exit_code == 0, res.output
    assert "prema on rbatch" in res.stdout and "SLO attainment at multiples" in res.stdout


@pytest.mark.parametrize("text, needle", [
    ("duration_s = 1\nbogus = 3\n[[device]]\nname='a'\nmodel='tiny'\nslo_ms=1\narrivals={kind='poisson',rate=5}\n",
     "unknown fields ['bogus']"),
    ("duration_s = 1\n[[device]]\nname='a'\nmodel='tiny'\nslo_ms=1\narrivals={kind='burst',rate=5}\n",
     "arrivals.kind = 'burst': must be one of ['gamma', 'mmpp', 'poisson', 'trace']"),
    ("duration_s = 1\n[[device]]\nname='a'\nmodel='nosuch'\nslo_ms=1\narrivals={kind='poisson',rate=5}\n",
     "model = 'nosuch': unknown model"),
    ("duration_s = 1\n[[device]]\nname='a'\nmodel='tiny'\nslo_ms=-1\narrivals={kind='poisson',rate=5}\n",
     "slo_ms = -1: must be a finite number > 0"),
    ("duration_s = 1\n[[device]]\nname='a'\nmodel='tiny'\nslo_ms=1\narrivals={kind='poisson',rate=5}\n"
     "[compare]\nloads = [0.5, -1]\n", "loads = [0.5, -1]: must be a non-empty list"),
    ("duration_s = 1\n[[device]]\nname='a'\nmodel='tiny'\nslo_ms=1\narrivals={kind='poisson',rate=5}\n"
     "[compare]\npatterns = ['steady', 'bursty']\n", "patterns = ['steady', 'bursty']: must be a non-empty list of "
                                                       "distinct values from ['steady', 'spiking']"),
])
def test_bad_scenarios_are_named(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    for cmd in (["serve", "--requests", "50"], ["compare", "--out", str(tmp_path / "o")]):
        res = CliRunner().invoke(main, cmd + ["--scenario", str(p)])
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: ") and needle in res.stderr, res.stderr


def test_parse_compare_rules():
    s = parse_compare({"loads": [0.9, 0.3], "seeds": [4], "spike": {"ratio": 3, "dwell_s": [1, 0.2]},
                       "grid": {"prema": [{"threshold": 0.1}]}})
    assert s.loads == (0.3, 0.9) and s.seeds == (4,) and s.spike_ratio == 3.0 and s.grid["prema"] == [{"threshold": 0.1}]
    with pytest.raises(ScenarioError, match=r"unknown fields \['load'\]: allowed"):
        parse_compare({"load": [0.5]})
    with pytest.raises(ScenarioError, match="grid.dynamic: scheduler 'dynamic': knob max_batch = 0"):
        parse_compare({"grid": {"dynamic": [{"max_batch": 0}]}})
    with pytest.raises(ScenarioError, match="spike.ratio = 0.5: must be a number >= 1"):
        parse_compare({"spike": {"ratio": 0.5}})
    with pytest.raises(ScenarioError, match="requests = 10: must be an integer >= 50"):
        parse_compare({"requests": 10})


# -- compare ----------------------------------------------------------------------------------
def test_intervals_stay_in_range():
    """A t-interval over three seeds is cut to the figure's range: latency >= 0, attainment <= 1."""
    from fluidnpu.sim.serving.compare import _ci95
    m, lo, hi = _ci95([1.0, 1.0, 100.0])
    assert lo < 0 < m < hi                                  # what the plain interval gives
    assert _ci95([1.0, 1.0, 100.0], 0.0) == (m, 0.0, hi)
    m2, lo2, hi2 = _ci95([0.99, 1.0, 0.2], 0.0, 1.0)
    assert hi2 == 1.0 and 0.0 <= lo2 < m2


def test_interval_is_the_t_interval():
    """Mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (ddof 1); the
    geometric interval is that of the logs."""
    from fluidnpu.sim.serving.compare import _ci95, _geo_ci
    m, lo, hi = _ci95([1.0, 2.0, 3.0])                 # s = 1, t(0.975, 2) = 4.3027
    assert m == 2.0 and hi - m == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4) and m - lo == hi - m
    m, lo, hi = _ci95([1.0, 3.0])                      # s = sqrt(2), t(0.975, 1) = 12.706
    assert (lo, hi) == pytest.approx((2.0 - 12.706, 2.0 + 12.706), rel=1e-4)
    assert _ci95([5.0]) == (5.0, 5.0, 5.0)
    g, glo, ghi = _geo_ci([2.0, 8.0])
    assert g == pytest.approx(4.0) and (glo, ghi) == pytest.approx(
        (4.0 * math.exp(-12.706 * math.log(2)), 4.0 * math.exp(12.706 * math.log(2))), rel=1e-4)


def test_compare_json_files_and_summary(tmp_path):
    p = _small_scenario(tmp_path, "[compare]\nloads = [0.5, 0.8]\nseeds = [1, 2]\nrequests = 300\n"
                                  "grid = { dynamic = [{max_batch = 4, max_delay_ms = 0.0}, {max_batch = 16}], "
                                  "prema = [{threshold = 0.0}, {threshold = 0.5}] }\n")
    out_dir = tmp_path / "cmp"
    res = CliRunner().invoke(main, ["compare", "--scenario", str(p), "--out", str(out_dir), "--json", "--jobs", "1"])
    d = _json(res)
    s = d["summary"]
    for k in ("avg_latency_ratio", "avg_latency_ratio_ci95", "avg_latency_ratio_per_seed", "tail_slo_ratio",
              "tail_slo_ratio_ci95", "tail_cell", "scheduler_only_avg_latency_ratio",
              "hardware_only_avg_latency_ratio", "best_baselines"):
        assert k in s, k
    assert d["seeds"] == [1, 2] and len(s["avg_latency_ratio_per_seed"]) == 2
    assert s["avg_latency_ratio"] > 0 and s["avg_latency_ratio_ci95"][0] <= s["avg_latency_ratio"] <= \
        s["avg_latency_ratio_ci95"][1]
    assert s["tail_cell"]["pattern"] == "spiking" and s["tail_cell"]["load"] == 0.8 and s["tail_cell"]["slo_mult"] == 2
    assert len(d["cells"]) == 4
    for c in d["cells"]:
        assert set(c["schedulers"]) == {"fcfs", "dynamic", "clipper", "lazy", "prema", "fluid"}
        assert c["schedulers"]["fluid"]["hardware"] == "fluid" and c["schedulers"]["prema"]["hardware"] == "rbatch"
        assert c["schedulers"]["dynamic"]["knobs_latency"] in ({"max_batch": 4, "max_delay_ms": 0.0}, {"max_batch": 16})
        assert c["best_baseline_latency"] in ("fcfs", "dynamic", "clipper", "lazy", "prema")
        best = c["schedulers"][c["best_baseline_latency"]]["mean_ms"]
        assert best == min(c["schedulers"][n]["mean_ms"] for n in ("fcfs", "dynamic", "clipper", "lazy", "prema"))
        e = c["schedulers"]["fluid"]
        assert e["mean_ms_ci95"][0] <= e["mean_ms"] <= e["mean_ms_ci95"][1]
    # the ratio is what the cells say: geometric mean of best-baseline / fluid over cells (and seeds)
    geo = float(np.exp(np.mean([np.log(c["ratio_mean_latency"]) for c in d["cells"]])))
    assert s["avg_latency_ratio"] == pytest.approx(geo, rel=0.15)
    for f in ("runs.csv", "compare.csv", "report.md", "compare.json", "latency_cdf.png", "latency_vs_load.png",
              "slo_vs_load.png"):
        assert (out_dir / f).stat().st_size > 100, f
    assert (out_dir / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((out_dir / "compare.csv").open()))
    assert len(rows) == 4 * 6
    runs = list(csv.DictReader((out_dir / "runs.csv").open()))
    # grid: fcfs 1 + dynamic 2 + clipper 4 + lazy 4 + prema 2 + fluid 1, + fluid@rbatch, + best@fluid
    assert len(runs) == 4 * 2 * (1 + 2 + 4 + 4 + 2 + 1 + 1 + 1)
    assert "avg_latency_ratio" in (out_dir / "report.md").read_text()


def test_compare_table_output(tmp_path):
    p = _small_scenario(tmp_path, "[compare]\nloads = [0.6]\npatterns = ['spiking']\nseeds = [3]\nrequests = 200\n")
    res = CliRunner().invoke(main, ["compare", "--scenario", str(p), "--out", str(tmp_path / "c"), "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert "avg_latency_ratio" in res.stdout and "tail_slo_ratio" in res.stdout
    assert "plots:" in res.stdout and "latency_cdf.png" in res.stdout
