"""Sweeps (fluidnpu.synth.sweep, ``fluidnpu sweep``): the file format and its errors, a run on
a Dask LocalCluster, resuming after a kill and after Ctrl-C, the table and the Pareto plots.

Points use the cycle model / mapper and the serving simulator on the ``tiny`` zoo model
(fast); the synthesis point runs the flow against the fake tools of test_synth.py.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.synth import sweep as sweep_mod
from fluidnpu.synth.sweep import SweepError, load_sweep, run_sweep, sweep_from_dict
from fluidnpu.synth.sweep_out import ResultStore, pareto_front

from test_synth import fake_tools  # noqa: F401  (fixture)

SCENARIO = """
[scenario.load]
duration_s = {duration}
[[scenario.load.device]]
name = "cam"
count = 4
slo_mult = 20
arrivals = {{ kind = "poisson", rate = 20000 }}
"""

#: 2 hardware configurations x 4 schedulers x 2 seeds = 16 points of perf + serving
SMALL_SWEEP = """
name = "small"
[grid]
tc = [4, 8]
tp = 4
mem_bytes = 4
model = "tiny"
scheduler = ["fcfs", {{ name = "dynamic", max_batch = 4 }}, "fluid", "lazy"]
seed = [1, 2]
[perf]
batches = [1, 4]
[serve]
""" + SCENARIO


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def lines(path: Path) -> list[str]:
    """The file's finished lines: a last line without its newline (a write cut short) is left out."""
    return path.read_text().split("\n")[:-1] if path.exists() else []


# -- the file format ---------------------------------------------------------------------

def test_points_and_columns(tmp_path):
    sw = load_sweep(write(tmp_path, SMALL_SWEEP.format(duration=0.01)))
    assert len(sw.points) == 16 and not sw.synth_jobs
    assert len({p.id for p in sw.points}) == 16
    assert sw.varying == ["label", "tc", "lanes", "scheduler", "seed"]
    p = sw.points[2]             # axes vary fastest from the right: ..., scheduler, seed
    assert p.params["scheduler"] == "dynamic(max_batch=4)" and p.params["model"] == "tiny"
    assert p.params["label"] == "tc=4,tp=4,mem_bytes=4" and p.params["mapping"] == "fluid"
    # the same file gives the same point ids (what resuming relies on)
    assert [q.id for q in load_sweep(tmp_path / "sweep.toml").points] == [q.id for q in sw.points]
    # explicit [[hw]] entries are crossed with the grid
    sw2 = sweep_from_dict({"hw": [{"label": "base"}, {"label": "small", "tc": 4, "tp": 4, "mem_bytes": 4}],
                           "grid": {"model": ["tiny"]}, "perf": {"batches": [2]}})
    assert [p.params["label"] for p in sw2.points] == ["base", "small"]


BAD = [
    ("colour = 1\n[perf]\n", "unknown field(s) colour in the sweep file; allowed:"),
    ("[grid]\ntcc = [4]\nmodel='tiny'\n[perf]\n", "unknown field(s) tcc in [grid]; allowed:"),
    ("[grid]\ntc = [4, 3]\ntp = 4\nmem_bytes = 4\nmodel='tiny'\n[perf]\n", "hardware point tc=3,tp=4,mem_bytes=4: hardware config: tc = 3: must be a power of two"),
    # mem_bytes left to the array: the message names tc and tp, the fields the point set
    ("[grid]\ntc = [2]\nmodel='tiny'\n[perf]\n", "hardware point tc=2: hardware config: tc = 2, tp = 8: the memory port is at least 4 bytes"),
    ("[grid]\ntc = [2]\nmem_bytes = 4\nmodel='tiny'\n[perf]\n", "mem_bytes = 4: holds 4 elements per beat"),
    ("[grid]\ntc = []\n[perf]\n", "grid.tc = []: give at least one value"),
    ("[grid]\nmodel = 'no-such-net'\n[perf]\n", "grid.model = 'no-such-net'"),
    ("[grid]\nmodel = 'tiny'\nmapping = 'wide'\n[perf]\n", "grid.mapping = 'wide': must be one of rbatch, stack, fluid"),
    ("[grid]\nmodel = 'tiny'\n[perf]\nbatches = [0]\n", "perf.batches entry 0: must be an integer from 1 to 255"),
    ("[grid]\nmodel = 'tiny'\n", "nothing to run"),
    ("[perf]\n", "[perf] needs grid.model"),
    ("[grid]\nmodel='tiny'\nscheduler=['fcfs']\n[perf]\n", "grid.scheduler is set but there is no [serve]"),
    ("[grid]\nmodel='tiny'\nscheduler=['edf']\n[serve]\n" + SCENARIO.format(duration=1),
     "grid.scheduler: scheduler = 'edf': unknown; allowed"),
    ("[grid]\nmodel='tiny'\nscheduler=[{name='dynamic', max_batc=4}]\n[serve]\n" + SCENARIO.format(duration=1),
     "max_batc"),
    ("[grid]\nmodel='tiny'\n[serve]\n" + SCENARIO.format(duration=1), "[serve] needs grid.scheduler"),
    ("[grid]\nmodel='tiny'\nscheduler='fcfs'\nscenario='rush'\n[serve]\n" + SCENARIO.format(duration=1),
     "grid.scenario = 'rush': neither a [scenario.NAME] table (load) nor a scenario file"),
    ("[grid]\nmodel='tiny'\nscheduler='fcfs'\n[serve]\n" + SCENARIO.format(duration=-1),
     "grid.scenario = 'load' with model 'tiny'"),
    ("[synth]\ntarget = 'ulx3s-12f'\n", "synth.target = 'ulx3s-12f': must be one of ulx3s-85f, icebreaker, generic"),
    ("[synth]\npack_only = 'yes'\n", "synth.pack_only = 'yes': must be true or false"),
    ("[[hw]]\ntc = 4\n[grid]\ntc = [8]\n[synth]\n", "tc is set both here and in [grid]"),
    ("[[hw]]\nlabel = 'a'\n[[hw]]\nlabel = 'a'\n[synth]\n", "appears twice"),
    ("[grid]\nmodel='tiny'\n[perf]\n[plot]\nx = [3]\n", "plot.x entry 3: must be a column name"),
    ("[synth]\nseed = 1\nseeds = [1, 2]\n", "synth.seed and synth.seeds are both given"),
    ("[synth]\nseeds = '4-2'\n", "synth.seeds = '4-2': the range '4-2' is empty"),
    ("[synth]\nseeds = 3\n", "synth.seeds = 3: must be a list of non-negative integers"),
    ("[synth]\nplacer = 'sa'\n", "synth.placer = 'sa': must be one of auto, heap, static"),
    ("[[hw]]\nplacer = 'sa'\n[synth]\n", "hw[0]: placer = 'sa': must be one of auto, heap, static"),
    ("[[hw]]\nplacer = 'static'\n[grid]\nmodel = 'tiny'\n[perf]\n", "a row's placer needs a [synth] section"),
    ("[synth]\nrouter = 'maze'\n", "synth.router = 'maze': must be one of auto, router1, router2"),
    ("[[hw]]\nrouter = 'maze'\n[synth]\n", "hw[0]: router = 'maze': must be one of auto, router1, router2"),
    ("[[hw]]\nrouter = 'router1'\n[grid]\nmodel = 'tiny'\n[perf]\n", "a row's router needs a [synth] section"),
    ("[synth]\nseeds = [1, 2]\npack_only = true\n", "pack_only stops before placement"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_files_name_field_value_and_rule(tmp_path, text, message):
    with pytest.raises(SweepError) as e:
        load_sweep(write(tmp_path, text))
    assert message in str(e.value)


def test_cli_bad_file_runs_nothing(tmp_path):
    """Every point is checked before any runs: the third configuration is bad, nothing is written."""
    text = SMALL_SWEEP.format(duration=0.01).replace("tc = [4, 8]", "tc = [4, 8, 5]")
    r = CliRunner().invoke(main, ["sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "error:" in r.output and "tc = 5: must be a power of two" in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = CliRunner().invoke(main, ["sweep", str(write(tmp_path, "[grid\n", "broken.toml"))])
    assert r.exit_code == 2 and "not valid TOML" in r.output


def test_cli_list(tmp_path):
    r = CliRunner().invoke(main, ["sweep", str(write(tmp_path, SMALL_SWEEP.format(duration=0.01))), "--list"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("small: 16 points, 0 synthesis runs")
    assert "scheduler=dynamic(max_batch=4)" in r.output


# -- running -------------------------------------------------------------------------------

def test_dask_local_cluster(tmp_path):
    """A small sweep through a Dask LocalCluster: first with a Client, then ``--dask ADDRESS``."""
    distributed = pytest.importorskip("distributed")
    f = write(tmp_path, SMALL_SWEEP.format(duration=0.01))
    import dask
    # dask's scratch (its workers' folders and locks) in the test's folder, not a
    # dask-scratch-space left in /tmp
    with dask.config.set({"temporary-directory": str(tmp_path / "dask")}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                     dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            res = run_sweep(load_sweep(f), tmp_path / "a", dask=client, progress=False)
        assert res.complete and res.ran == 16 and res.skipped == 0
        rows = read_csv(tmp_path / "a" / "results.csv")
        assert len(rows) == 16
        assert [int(r["point"]) for r in rows] == list(range(16))
        for col in ("label", "tc", "tp", "lanes", "model", "scheduler", "seed", "perf_b1_cycles",
                    "perf_b4_util", "mean_ms", "p99_ms", "slo_attainment"):
            assert col in rows[0], col
        assert all(0 <= float(r["slo_attainment"]) <= 1 for r in rows)
        assert {r["host"] for r in ResultStore(tmp_path / "a" / "results.jsonl").records()}
        # the CLI on the same cluster by address
        r = CliRunner().invoke(main, ["sweep", str(f), "--dask", cluster.scheduler_address,
                                      "--out", str(tmp_path / "b"), "--quiet"])
        assert r.exit_code == 0, r.output
        assert "16 of 16 points" in r.output
    a = {(r["label"], r["scheduler"], r["seed"]): r["p99_ms"] for r in rows}
    b = {(r["label"], r["scheduler"], r["seed"]): r["p99_ms"] for r in read_csv(tmp_path / "b" / "results.csv")}
    assert a == b          # the same points give the same numbers wherever they run


def test_local_pool_and_plots(tmp_path):
    f = write(tmp_path, SMALL_SWEEP.format(duration=0.01) + '[plot]\nx = ["lanes"]\ny = ["p99_ms", "slo_attainment"]\n')
    res = run_sweep(load_sweep(f), tmp_path / "o", workers=2, progress=False)
    assert res.complete and res.done == 16
    assert sorted(p.name for p in res.plots) == ["pareto_p99_ms_vs_lanes.png", "pareto_slo_attainment_vs_lanes.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in res.plots)
    # all done: a rerun runs nothing and rebuilds the same table
    before = (tmp_path / "o" / "results.csv").read_text()
    res2 = run_sweep(load_sweep(f), tmp_path / "o", workers=2, progress=False)
    assert res2.ran == 0 and res2.skipped == 16 and res2.complete
    assert (tmp_path / "o" / "results.csv").read_text() == before


def test_resume_after_kill(tmp_path):
    """Kill a sweep (SIGKILL) half-way; the rerun does only the rest and the table is complete."""
    f = write(tmp_path, SMALL_SWEEP.format(duration=0.25))
    out = tmp_path / "o"
    jl = out / "results.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "fluidnpu", "sweep", str(f), "--out", str(out), "--workers", "1",
                          "--quiet", "--no-plots"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while len(lines(jl)) < 4 and p.poll() is None and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = lines(jl)
    assert 4 <= len(first) < 16, f"the sweep was not stopped half-way ({len(first)} records)"
    # a crash in the middle of a write leaves an unfinished line: it must be dropped, not parsed
    with open(jl, "a") as fh:
        fh.write('{"kind": "point", "id": "p-half-writ')
    calls = []
    real = sweep_mod.evaluate_point

    def counting(job):
        calls.append(job["id"])
        return real(job)
    sweep_mod.evaluate_point = counting
    try:
        res = run_sweep(load_sweep(f), out, workers=1, progress=False, plots=False)
    finally:
        sweep_mod.evaluate_point = real
    done_before = {json.loads(x)["id"] for x in first}
    assert len(calls) == 16 - len(first) and not (set(calls) & done_before)
    assert res.complete and res.skipped == len(first) and res.ran == 16 - len(first)
    after = lines(jl)
    assert after[:len(first)] == first                   # finished records are kept as they were
    ids = [json.loads(x)["id"] for x in after]
    assert len(ids) == len(set(ids)) == 16
    rows = read_csv(out / "results.csv")
    assert len(rows) == 16 and [int(r["point"]) for r in rows] == list(range(16))


def test_interrupt_then_resume(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) after 5 points: saved, table of 5; the rerun evaluates the other 11."""
    f = write(tmp_path, SMALL_SWEEP.format(duration=0.01))
    calls = []
    real = sweep_mod.evaluate_point

    def interrupting(job):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(job["id"])
        return real(job)
    monkeypatch.setattr(sweep_mod, "evaluate_point", interrupting)
    res = run_sweep(load_sweep(f), tmp_path / "o", workers=1, progress=False, plots=False)
    assert res.interrupted and res.done == 5 and not res.complete
    assert len(read_csv(tmp_path / "o" / "results.csv")) == 5
    first = list(calls)
    monkeypatch.setattr(sweep_mod, "evaluate_point", lambda job: (calls.append(job["id"]), real(job))[1])
    res = run_sweep(load_sweep(f), tmp_path / "o", workers=1, progress=False, plots=False)
    assert res.complete and res.ran == 11 and len(calls) == 16 and not (set(calls[5:]) & set(first))


def test_failed_point_is_reported_and_retried(tmp_path, monkeypatch):
    f = write(tmp_path, SMALL_SWEEP.format(duration=0.01))
    real = sweep_mod.evaluate_point
    sw = load_sweep(f)
    bad = sw.points[3].id

    def flaky(job):
        if job["id"] == bad:
            return {"kind": "point", "id": bad, "ok": False, "error": "RuntimeError: boom", "params": job["params"]}
        return real(job)
    monkeypatch.setattr(sweep_mod, "evaluate_point", flaky)
    res = run_sweep(sw, tmp_path / "o", workers=1, progress=False, plots=False)
    assert res.done == 15 and len(res.failed) == 1 and "boom" in res.failed[0]["error"]
    assert (tmp_path / "o" / "errors.jsonl").is_file()
    monkeypatch.setattr(sweep_mod, "evaluate_point", real)
    res = run_sweep(load_sweep(f), tmp_path / "o", workers=1, progress=False, plots=False)
    assert res.complete and res.ran == 1


#: one small configuration (the smallest 8-bit core, as test_synth.SMALL) to synthesise
SYNTH_HW = """
name = "syn"
[[hw]]
label = "small"
tc = 4
tp = 4
tr = 4
x_buf_elems = 64
w_buf_elems = 16
mem_bytes = 4
addr_width = 16
dim_width = 8
"""


def test_synthesis_points_with_fake_tools(tmp_path, fake_tools):  # noqa: F811
    """[synth] runs once per hardware configuration (not per scheduler); resources join every row."""
    text = SYNTH_HW + """
[grid]
model = "tiny"
scheduler = ["fcfs", "fluid"]
[synth]
target = "ulx3s-85f"
[serve]
""" + SCENARIO.format(duration=0.01)
    sw = load_sweep(write(tmp_path, text))
    assert len(sw.points) == 2 and len(sw.synth_jobs) == 1
    res = run_sweep(sw, tmp_path / "o", workers=1, progress=False)
    assert res.complete, res.failed
    assert fake_tools("yosys") == 1 and fake_tools("nextpnr") == 1
    rows = read_csv(tmp_path / "o" / "results.csv")
    assert [(r["label"], r["scheduler"], r["luts"], r["dsps"], r["fits"]) for r in rows] == \
        [("small", "fcfs", "13404", "25", "True"), ("small", "fluid", "13404", "25", "True")]
    assert float(rows[0]["fmax_mhz"]) == pytest.approx(41.95, abs=0.01)
    assert rows[0]["router"] == "router2"      # how the row was routed, in the table
    assert {p.name for p in res.plots} == {"pareto_p99_ms_vs_luts.png", "pareto_p99_ms_vs_dsps.png",
                                          "pareto_slo_attainment_vs_luts.png", "pareto_slo_attainment_vs_dsps.png"}


def test_synthesis_seed_sweep_in_a_sweep(tmp_path, fake_tools, monkeypatch):  # noqa: F811
    """synth.seeds: each configuration's best seed and every seed's Fmax reach the table."""
    monkeypatch.setenv("FAKE_FMAX_BY_SEED", json.dumps({"1": 97.5, "2": 104.25}))
    text = SYNTH_HW + """
[synth]
target = "ulx3s-85f"
seeds = "1-2"
"""
    sw = load_sweep(write(tmp_path, text))
    res = run_sweep(sw, tmp_path / "o", workers=1, progress=False)
    assert res.complete, res.failed
    assert fake_tools("yosys") == 1 and fake_tools("nextpnr") == 2
    (row,) = read_csv(tmp_path / "o" / "results.csv")
    assert float(row["fmax_mhz"]) == pytest.approx(104.25)
    assert row["synth_seed"] == "2" and row["seed_fmax"] == "1: 97.5; 2: 104.25"


def test_unroutable_row_keeps_the_placement_estimate(tmp_path, fake_tools, monkeypatch):  # noqa: F811
    """A row whose routing the timeout stops still fills the table: routed false and
    nextpnr's estimate after placement; the sweep completes."""
    text = (Path(__file__).parent / "data" / "synth" / "ecp5_nextpnr.log").read_text()
    placed = tmp_path / "placed.log"
    placed.write_text(text[:text.index("Info: Routing globals")])
    monkeypatch.setenv("FAKE_NEXTPNR_LOG", str(placed))
    monkeypatch.setenv("FAKE_NEXTPNR_SLEEP", "30")
    sw = load_sweep(write(tmp_path, SYNTH_HW + "[synth]\ntarget = 'ulx3s-85f'\ntimeout_s = 3\n"))
    res = run_sweep(sw, tmp_path / "o", workers=1, progress=False)
    assert res.complete, res.failed
    recs = [json.loads(ln) for ln in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    (syn,) = [r for r in recs if r["kind"] == "synth"]
    assert "not routed (40.4 MHz after placement)" in sweep_mod._describe(syn)
    (row,) = read_csv(tmp_path / "o" / "results.csv")
    assert row["fits"] == "True" and row["routed"] == "False" and row["fmax_mhz"] == ""
    assert float(row["fmax_placed_mhz"]) == pytest.approx(40.40)


def test_pareto_front():
    pts = [(1, 10.0), (2, 5.0), (3, 6.0), (4, 1.0), (2, 7.0), (5, 1.0)]
    assert pareto_front(pts, maximise_y=False) == [0, 1, 3]
    assert pareto_front([(1, 0.5), (2, 0.9), (3, 0.8), (3, 1.0)], maximise_y=True) == [0, 1, 3]


def test_a_failing_task_is_a_record(tmp_path):
    """evaluate_point and evaluate_synth never raise: a failure is a record with the error,
    a traceback and the elapsed time; a good point's record says ok."""
    from fluidnpu.synth.sweep_tasks import evaluate_point, evaluate_synth
    bad = evaluate_point({"id": "p", "params": {}, "hw": {"tc": 3}})
    assert bad["ok"] is False and "tc" in bad["error"] and "Traceback" in bad["traceback"]
    assert bad["elapsed_s"] >= 0 and "metrics" not in bad
    syn = evaluate_synth({"id": "s", "label": "x", "hw": {}, "synth": {}})
    assert syn["ok"] is False and "KeyError" in syn["error"] and syn["elapsed_s"] >= 0
    sw = load_sweep(Path(__file__).parents[1] / "examples" / "own_model" / "sweep.toml")
    good = evaluate_point(sw.points[0].job)
    assert good["ok"] is True and good["metrics"]["perf_b1_cycles"] > 0


def test_a_row_may_set_its_own_placer(tmp_path):
    """``placer`` in an [[hw]] row overrides synth.placer for that row's synthesis only (the
    row's configuration may need another placer than the default's); a row without it keeps
    the job id it had before rows could set one."""
    base = "[[hw]]\nlabel = 'a'\n[[hw]]\nlabel = 'b'\ntc = 4\n{extra}[synth]\ntarget = 'ulx3s-85f'\n"
    plain = load_sweep(write(tmp_path, base.format(extra=""), "plain.toml"))
    mixed = load_sweep(write(tmp_path, base.format(extra="placer = 'static'\n"), "mixed.toml"))
    placers = {j["label"]: j["synth"].get("placer") for j in mixed.synth_jobs.values()}
    assert placers == {"a": None, "b": "static"}
    ids = {j["label"]: sid for sid, j in plain.synth_jobs.items()}
    mids = {j["label"]: sid for sid, j in mixed.synth_jobs.items()}
    assert mids["a"] == ids["a"] and mids["b"] != ids["b"]


def test_a_row_may_set_its_own_router(tmp_path, monkeypatch):
    """``router`` in an [[hw]] row overrides synth.router for that row's synthesis only (the
    16 x 8 routes with router1, the others with the default router2) and reaches
    synthesize; a row without it keeps its job id; synth.router applies to every row."""
    base = "[[hw]]\nlabel = 'a'\n[[hw]]\nlabel = 'b'\ntc = 4\n{extra}[synth]\ntarget = 'ulx3s-85f'\n{glob}"
    plain = load_sweep(write(tmp_path, base.format(extra="", glob=""), "plain.toml"))
    mixed = load_sweep(write(tmp_path, base.format(extra="router = 'router1'\nplacer = 'heap'\n",
                                                   glob=""), "mixed.toml"))
    got = {j["label"]: (j["synth"].get("router"), j["synth"].get("placer"))
           for j in mixed.synth_jobs.values()}
    assert got == {"a": (None, None), "b": ("router1", "heap")}
    ids = {j["label"]: sid for sid, j in plain.synth_jobs.items()}
    mids = {j["label"]: sid for sid, j in mixed.synth_jobs.items()}
    assert mids["a"] == ids["a"] and mids["b"] != ids["b"]
    glob = load_sweep(write(tmp_path, base.format(extra="", glob="router = 'router1'\n"), "g.toml"))
    assert {j["synth"].get("router") for j in glob.synth_jobs.values()} == {"router1"}
    # the task hands the row's router and placer to the flow
    import fluidnpu.synth.flow as flow
    from fluidnpu.synth.sweep_tasks import evaluate_synth
    seen = []

    def fake(cfg, target, out_dir, **kw):
        seen.append(kw)
        raise RuntimeError("stop here")
    monkeypatch.setattr(flow, "synthesize", fake)
    for j in mixed.synth_jobs.values():
        assert evaluate_synth(j)["ok"] is False
    assert sorted((kw["router"], kw["placer"]) for kw in seen) == [("auto", "auto"), ("router1", "heap")]
