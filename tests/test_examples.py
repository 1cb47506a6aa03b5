"""examples/own_model: every command of docs/own_model.md runs, and the figures that page
quotes are what the code gives."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.sim.serving import load_scenario
from fluidnpu.sim.workloads import WorkloadError
from fluidnpu.sim.workloads.loader import load_model

EX = Path(__file__).parents[1] / "examples" / "own_model"


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_model_file_and_its_cycles():
    m = load_model(EX / "tinycnn.toml")
    assert [l.name for l in m.layers] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc"]
    assert [e.after for e in m.exits] == [1, 3]
    assert m.exit_probs == pytest.approx((0.4, 0.3, 0.3))
    d = json.loads(cli("perf", "--model", EX / "tinycnn.toml", "--json").stdout)
    # an early exit's path includes the cycles its result write adds (docs/own_model.md; the
    # default 8 x 8 since 5 Dec 2026; the 8 x 4 and 4 x 4 figures below; 27,114 / 87,166 /
    # 110,041 before the next row tile's X was loaded in parts and slots freed once read,
    # that evening: conv1 7,639 -> 7,489 cycles, conv2-4 at other policies now; one cycle more
    # per load since the write side's memory-hit stage, 5 Dec, night: 26,922 / 86,407 / 109,282 and
    # 7,489 / 19,233 / 19,808 / 39,456 / 19,872 / 3,029 before; two more per command since
    # the row stage's two read cycles in front of the drain, 6 Dec 2026: 26,940 / 86,428 /
    # 109,305 and 7,505 ... 3,030 before)
    assert [p["cycles"] for p in d["exit_paths"]] == [26_946, 86_440, 109_321]
    assert [l["cycles"] for l in d["layers"]] == [7_507, 19_236, 19_811, 39_459, 19_875, 3_032]
    # the 8 x 4 (the default from 4 Dec 2026; one cycle more per load since the loader's index
    # stage, 5 Dec: 52,953 / 172,720 / 218,096 before; one more per group since the PE array's
    # product register, that morning: 52,956 / 172,726 / 218,104 before; one more per layer
    # since the drain's placement took two stages, at noon: 52,959 / 172,732 / 218,112 before;
    # X in parts and slots freed once read, that evening: 52,962 / 172,738 / 218,120 before;
    # the memory-hit stage, 5 Dec, night: 52,834 / 171,306 / 216,688 and conv1 14,269 ... fc 5,886 before;
    # the row stage, 6 Dec: 52,837 / 171,312 / 216,696 and 14,270 ... 5,887 before)
    d84 = json.loads(cli("perf", "--model", EX / "tinycnn.toml", "--set", "tp=4", "--json").stdout)
    assert [p["cycles"] for p in d84["exit_paths"]] == [52_843, 171_324, 216_712]
    assert [l["cycles"] for l in d84["layers"]] == [14_272, 38_307, 39_458, 78_698, 39_530, 5_889]
    d4 = json.loads(cli("perf", "--model", EX / "tinycnn.toml", "--set", "tc=4", "--set", "tp=4",
                        "--set", "x_buf_elems=65536",
                        "--set", "w_buf_elems=16384",
                        "--json").stdout)
    assert [p["cycles"] for p in d4["exit_paths"]] == [103_557, 332_630, 414_942]   # 103,551 / 332,618 / 414,926 before the row stage (6 Dec), 103,548 / 332,612 / 414,918 before the memory-hit stage (5 Dec, night), 103,563 / 333,091 / 415,397 before the X parts


def test_a_broken_topology_names_line_and_field(tmp_path):
    for f in ("tinycnn.csv", "tinycnn.toml"):
        shutil.copy(EX / f, tmp_path / f)
    csv_text = (tmp_path / "tinycnn.csv").read_text()
    (tmp_path / "tinycnn.csv").write_text(csv_text.replace("conv2, 32, 32, 3, 3, 16, 32, 2, 1",
                                                           "conv2, 32, 32, 3, 3, 16, 32, 0, 1"))
    with pytest.raises(WorkloadError, match=r"tinycnn.csv:5: Strides = '0'"):
        load_model(tmp_path / "tinycnn.toml")


def test_serve_the_scenario():
    sc = load_scenario(EX / "scenario.toml")
    assert sorted(m.name for m in sc.models) == ["digits", "tinycnn"]
    d = json.loads(cli("serve", "--scenario", EX / "scenario.toml", "--json").stdout)
    s = d["summary"]
    assert d["requests"] == 11_661 and s["served"] == 11_153
    # docs/own_model.md, "Serve a scenario" (5 Dec 2026, the 8 x 8 default; 0.40 ms and 0.997 on
    # the 8 x 4 before it, 1.23 ms and 0.938 on the 4 x 4)
    assert round(s["mean_ms"], 2) == 0.16 and round(s["slo_attainment"], 3) == 1.0
    assert set(s["exits_per_head"]) == {"tinycnn", "digits"}


def test_compare_and_sweep(tmp_path):
    d = json.loads(cli("compare", "--scenario", EX / "scenario.toml", "--out", tmp_path / "cmp", "--json").stdout)
    s = d["summary"]
    # on this workload fluid is level with PREMA as a system and 4 % behind as a scheduler alone, and
    # ahead of the throughput-maximising baselines; docs/own_model.md's figures (5 Dec 2026, night, the 8 x 8
    # default; 1.00 before the write side's memory-hit stage, 0.99 and 1.69 before the loader's X
    # parts on 5 Dec; on the 8 x 4 before it 0.95, 1.60, 0.93 and tail 0.99; on the 4 x 4 0.92,
    # 1.59, 0.91 and 0.98)
    assert round(s["system"]["vs_best"]["avg_latency_ratio"], 2) == 1.01
    assert round(s["system"]["vs_throughput"]["avg_latency_ratio"], 2) == 1.71
    assert round(s["scheduler_only"]["vs_preemptive"]["avg_latency_ratio"], 2) == 0.96
    assert round(s["system"]["vs_best"]["tail_ratio"], 2) == 1.01
    assert all(a["attainable"] for a in d["attainable"].values()) and len(d["seeds"]) == 10
    spread = [e["mean_ms_ci95"] + e["attainment_ci95"] for c in d["cells"] for hw in c["hardware"].values()
              for e in hw.values()]
    assert all(lo >= 0 and s_hi <= 1 for lo, _, _, s_hi in spread)
    cli("sweep", EX / "sweep.toml", "--out", tmp_path / "sw", "--workers", "1", "--quiet", "--no-plots")
    rows = list(csv.DictReader((tmp_path / "sw" / "results.csv").open()))
    got = {(r["label"], r["scheduler"]): (round(float(r["perf_b1_ms"]), 3), round(float(r["slo_attainment"]), 3))
           for r in rows}
    # docs/own_model.md, "Sweep the hardware" (4 Dec 2026, d2c1c7d's balanced row tiles; the 4 x 4
    # and 8 x 4 pinned, the 8 x 8 the default since 5 Dec)
    # (the 4 x 4's attainment 0.933 until 5 Dec 2026, when the base, whose latency sets the
    # deadlines, became the 8 x 8)
    # (4.154 / 0.908, 2.181 / 0.997 and 1.1 ms before the loader's X parts, 5 Dec evening)
    assert got[("4x4", "fluid")] == (4.149, 0.909) and got[("8x4", "fluid")] == (2.167, 0.997)
    assert got[("8x8", "fcfs")] == (1.093, 1.0)      # 1.09305 ms (1.09282 before the memory-hit stage, 1.09956 before the X parts)
    assert len(rows) == 9


def test_sweep_point_model_other_than_the_scenarios(tmp_path):
    """A scenario device's model file is found when the point's own model is another one."""
    text = (EX / "sweep.toml").read_text().replace('model = "tinycnn.toml"', 'model = "digits"')
    (tmp_path / "sw.toml").write_text(text.replace('scenario = "scenario.toml"',
                                                   f'scenario = "{EX / "scenario.toml"}"'))
    cli("sweep", tmp_path / "sw.toml", "--out", tmp_path / "out", "--workers", "1", "--quiet", "--no-plots")
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert len(rows) == 9 and all(r["model"] == "digits" and float(r["mean_ms"]) > 0 for r in rows)
