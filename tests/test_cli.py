"""The fluidnpu CLI: config, gemm input validation and output, generate, demo; metrics."""
import json
import re
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu import metrics
from fluidnpu.cli import main
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.runner import MemTiming, SimError
from fluidnpu.outputs import atomic_write


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def npy(tmp_path, name, a, dtype=np.int64):
    p = tmp_path / name
    np.save(p, np.asarray(a, dtype=dtype))
    return p


@pytest.fixture
def no_runner(monkeypatch):
    """Make importing the simulator runners fail, to prove validation comes first."""
    monkeypatch.setitem(sys.modules, "fluidnpu.hw.runner", None)
    monkeypatch.setitem(sys.modules, "fluidnpu.hw.gemm_runner", None)


@pytest.fixture
def operands(tmp_path):
    rng = np.random.default_rng(7)
    x = npy(tmp_path, "x.npy", rng.integers(-128, 128, (5, 12)), np.int8)
    w = npy(tmp_path, "w.npy", rng.integers(-128, 128, (12, 3)), np.int8)
    b = npy(tmp_path, "b.npy", rng.integers(-1000, 1000, 3), np.int32)
    return x, w, b


# -- config ----------------------------------------------------------------------------

def test_config_json_default():
    r = run("config", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["hw"] == HwConfig().to_dict()
    assert d["derived"]["policies"] == 16                 # the 8 x 8: B_P and k in 1 .. 8
    assert d["derived"]["lanes"] == 64 and d["hw"]["mem_bytes"] == 8
    assert HwConfig.from_dict(d) == HwConfig()


def test_config_json_file_and_set(repo_root):
    r = run("config", "--config", repo_root / "examples" / "hw_small.toml", "--set", "tr=16", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["hw"]["tc"], d["hw"]["mem_bytes"], d["hw"]["tr"]) == (4, 4, 16)
    assert d["derived"]["policies"] == 9
    assert d["derived"]["k_choices"] == [1, 2, 4]


def test_config_table():
    r = run("config", "--set", "tr=32")
    assert r.exit_code == 0, r.output
    rows = {}
    for line in r.output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    assert rows["tr"] == "32" and rows["tc"] == "8"
    assert rows["policies"] == "16" and rows["x_depth"] == "2048"


@pytest.mark.parametrize("args,message", [
    (["--set", "tc=3"], "error: hardware config: tc = 3"),
    (["--set", "bogus=1"], "error: --set bogus: unknown field"),
    (["--set", "tc"], "error: --set 'tc': expected name=value"),
    (["--config", "no/such/hw.toml"], "no such file"),
])
def test_config_errors_exit_2_without_traceback(args, message):
    r = run("config", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output


def test_bad_toml_is_reported(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text("[hw]\ntc = \n")
    r = run("config", "--config", p)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "not valid TOML" in r.stderr


# -- gemm: input validation (no simulator) ---------------------------------------------

def gemm_args(x, w, out, *extra):
    return ["gemm", "--x", x, "--w", w, "--out", out, *extra]


def expect_usage_error(r, option, *fragments):
    assert r.exit_code == 2, r.output
    assert f"'{option}'" in r.output, r.output
    for f in fragments:
        assert f in r.output, r.output


def test_gemm_missing_file(tmp_path, no_runner, operands):
    _, w, _ = operands
    r = run(*gemm_args(tmp_path / "nope.npy", w, tmp_path / "o.npy"))
    expect_usage_error(r, "--x", "nope.npy", "does not exist")


def test_gemm_not_npy(tmp_path, no_runner, operands):
    x, _, _ = operands
    bad = tmp_path / "w.npy"
    bad.write_text("1 2 3\n")
    r = run(*gemm_args(x, bad, tmp_path / "o.npy"))
    expect_usage_error(r, "--w", "not a readable .npy file")


def test_gemm_float_array(tmp_path, no_runner, operands):
    _, w, _ = operands
    x = npy(tmp_path, "xf.npy", np.ones((5, 12)), np.float32)
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, "--x", "float32", "integer")


def test_gemm_shape_mismatch(tmp_path, no_runner, operands):
    x, _, _ = operands
    w = npy(tmp_path, "w13.npy", np.zeros((13, 3)))
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, "--w", "P = 13", "P = 12")
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("xshape,option,fragment", [
    ((60,), "--x", "2-D (R, P)"),
    ((2, 3, 10), "--x", "2-D (R, P)"),
    ((0, 12), "--x", "R = 0"),
])
def test_gemm_bad_x_shape(tmp_path, no_runner, operands, xshape, option, fragment):
    _, w, _ = operands
    x = npy(tmp_path, "xs.npy", np.zeros(xshape))
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, option, fragment)


def test_gemm_w_not_2d(tmp_path, no_runner, operands):
    x, _, _ = operands
    w = npy(tmp_path, "w1.npy", np.zeros(12))
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, "--w", "2-D (P, C)")


def test_gemm_zero_p(tmp_path, no_runner):
    x = npy(tmp_path, "x.npy", np.zeros((3, 0)))
    w = npy(tmp_path, "w.npy", np.zeros((0, 2)))
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, "--x", "P = 0")


def test_gemm_dimension_too_large_for_dim_width(tmp_path, no_runner):
    x = npy(tmp_path, "x.npy", np.zeros((3, 4)))
    w = npy(tmp_path, "w.npy", np.zeros((4, 256)))
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--set", "dim_width=8"))
    expect_usage_error(r, "--w", "C = 256", "1 to 255")


@pytest.mark.parametrize("value", [128, -129, 1000])
def test_gemm_x_out_of_range(tmp_path, no_runner, operands, value):
    _, w, _ = operands
    a = np.zeros((5, 12), dtype=np.int64)
    a[3, 7] = value
    x = npy(tmp_path, "xr.npy", a)
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, "--x", f"[3, 7] = {value}", "[-128, 127]")


def test_gemm_w_out_of_range_uint(tmp_path, no_runner, operands):
    x, _, _ = operands
    a = np.zeros((12, 3), dtype=np.uint8)
    a[11, 2] = 200
    w = npy(tmp_path, "wr.npy", a, np.uint8)
    r = run(*gemm_args(x, w, tmp_path / "o.npy"))
    expect_usage_error(r, "--w", "[11, 2] = 200")


def test_gemm_range_follows_data_width(tmp_path, no_runner):
    x = npy(tmp_path, "x.npy", np.full((2, 2), 8))
    w = npy(tmp_path, "w.npy", np.ones((2, 2)))
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--set", "data_width=4"))
    expect_usage_error(r, "--x", "= 8", "[-8, 7]")


@pytest.mark.parametrize("bias,fragment", [
    (np.zeros(4), "length C = 3"),
    (np.zeros((3, 1)), "length C = 3"),
    (np.array([0, 1 << 31, 0]), f"[1] = {1 << 31}"),
    (np.array([0, 0, -(1 << 31) - 1]), "int32 range"),
])
def test_gemm_bad_bias(tmp_path, no_runner, operands, bias, fragment):
    x, w, _ = operands
    b = npy(tmp_path, "bb.npy", bias)
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--bias", b))
    expect_usage_error(r, "--bias", fragment)


@pytest.mark.parametrize("opt,value,fragments", [
    ("--stack", "3", ["K = 3", "1, 2, 4"]),
    ("--stack", "16", ["K = 16"]),
    ("--split", "16", ["BP = 16", "1, 2, 4"]),
    ("--split", "0", ["BP = 0"]),
    ("--requant", "5", ["MULT,SHIFT", "8000,24"]),
    ("--requant", "a,b", ["MULT,SHIFT"]),
    ("--requant", "40000,8", ["MULT = 40000", "-32768 to 32767"]),
    ("--requant", "100,64", ["SHIFT = 64", "0 to 63"]),
    ("--requant", "100,-1", ["SHIFT = -1"]),
    ("--mem-interval", "0", ["0"]),
    ("--mem-latency", "-1", ["-1"]),
    ("--sim", "modelsim", ["modelsim"]),
])
def test_gemm_bad_option(tmp_path, no_runner, operands, opt, value, fragments):
    x, w, _ = operands
    r = run(*gemm_args(x, w, tmp_path / "o.npy", opt, value))
    expect_usage_error(r, opt, *fragments)


def test_gemm_stack_follows_config(tmp_path, no_runner, repo_root, operands):
    x, w, _ = operands
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--config", repo_root / "examples" / "hw_small.toml",
                       "--stack", "8"))
    expect_usage_error(r, "--stack", "1, 2, 4", "tc = 4")


def test_gemm_config_error(tmp_path, no_runner, operands):
    x, w, _ = operands
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--set", "mem_bytes=3"))
    assert r.exit_code == 2
    assert r.stderr.startswith("error: hardware config: mem_bytes = 3")


# -- gemm: running, with a stand-in runner ---------------------------------------------

def fake_runner(monkeypatch, cycles=1000, corrupt=False, fail=False):
    """Install a ``fluidnpu.hw.gemm_runner`` that answers from the reference; return its call log."""
    calls = []

    def run_gemm(cfg, x, w, bias, *, out_mode, mult, shift, relu, bp, k, sim, wave, mem):
        calls.append(dict(cfg=cfg, bias=bias, out_mode=out_mode, mult=mult, shift=shift,
                          relu=relu, bp=bp, k=k, sim=sim, wave=wave, mem=mem))
        if fail:
            raise SimError("icarus: layer 0 timed out")
        out = gemm_reference(cfg, x, w, bias, out_mode=out_mode, mult=mult, shift=shift, relu=relu)
        if corrupt:
            out = out.copy()
            out[1, 2] += 1
        return types.SimpleNamespace(out=out, cycles=cycles, sim=sim,
                                     wave=None if wave is None else wave.with_suffix(".fst"))

    mod = types.ModuleType("fluidnpu.hw.gemm_runner")
    mod.run_gemm = run_gemm
    monkeypatch.setitem(sys.modules, "fluidnpu.hw.gemm_runner", mod)
    return calls


def test_gemm_json_requant(tmp_path, monkeypatch, operands):
    calls = fake_runner(monkeypatch, cycles=500)
    x, w, b = operands
    out = tmp_path / "sub" / "o.npy"
    r = run(*gemm_args(x, w, out, "--bias", b, "--requant", "300,10", "--relu", "--stack", "2",
                       "--split", "4", "--sim", "verilator", "--json", "--mem-latency", "3"))
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    macs = 5 * 12 * 3
    rl = metrics.roofline(HwConfig(), 5, 12, 3, bias=True, requant=True)
    assert d["cycles"] == 500 and d["macs"] == macs
    assert d["utilisation"] == pytest.approx(macs / (500 * HwConfig().lanes))
    assert d["roofline_cycles"] == rl.cycles
    assert d["roofline_efficiency"] == pytest.approx(rl.cycles / 500)
    assert d["sim"] == "verilator" and d["shape"] == [5, 12, 3]
    assert d["policy"] == {"bp": 4, "k": 2} and d["check"] is True
    (c,) = calls
    assert (c["out_mode"], c["mult"], c["shift"], c["relu"]) == (OUT_REQUANT, 300, 10, True)
    assert c["mem"] == MemTiming(latency=3, interval=1)
    o = np.load(out)
    assert o.dtype == np.int8 and o.shape == (5, 3)
    ref = gemm_reference(HwConfig(), np.load(x), np.load(w), np.load(b), out_mode=OUT_REQUANT,
                         mult=300, shift=10, relu=True)
    assert np.array_equal(o, ref)
    assert [p.name for p in out.parent.iterdir()] == ["o.npy"]


def test_gemm_raw_human_summary(tmp_path, monkeypatch, operands):
    calls = fake_runner(monkeypatch)
    x, w, _ = operands
    out = tmp_path / "o.npy"
    r = run(*gemm_args(x, w, out))
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "cycles 1000" in r.output
    assert calls[0]["out_mode"] == OUT_RAW and calls[0]["bias"] is None
    assert calls[0]["sim"] == "icarus" and (calls[0]["bp"], calls[0]["k"]) == (1, 1)
    o = np.load(out)
    assert o.dtype == np.int32
    assert np.array_equal(o, np.load(x).astype(np.int64) @ np.load(w).astype(np.int64))


def test_gemm_requant_wide_data_is_int16(tmp_path, monkeypatch):
    fake_runner(monkeypatch)
    x = npy(tmp_path, "x.npy", np.full((2, 3), 1000), np.int16)
    w = npy(tmp_path, "w.npy", np.full((3, 2), -3), np.int16)
    out = tmp_path / "o.npy"
    r = run(*gemm_args(x, w, out, "--set", "data_width=12", "--requant", "1,0"))
    assert r.exit_code == 0, r.output
    o = np.load(out)
    assert o.dtype == np.int16 and (o == -2048).all()


def test_gemm_mismatch_exits_1(tmp_path, monkeypatch, operands):
    fake_runner(monkeypatch, corrupt=True)
    x, w, _ = operands
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--json"))
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["check"] is False
    assert "[1, 2]" in r.stderr


def test_gemm_sim_error_exits_1_without_traceback(tmp_path, monkeypatch, operands):
    fake_runner(monkeypatch, fail=True)
    x, w, _ = operands
    out = tmp_path / "o.npy"
    r = run(*gemm_args(x, w, out))
    assert r.exit_code == 1, r.output
    assert r.stderr == "error: icarus: layer 0 timed out\n"
    assert not out.exists()


def test_gemm_wave_path_reported(tmp_path, monkeypatch, operands):
    calls = fake_runner(monkeypatch)
    x, w, _ = operands
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--wave", tmp_path / "g.vcd", "--json"))
    assert r.exit_code == 0, r.output
    assert calls[0]["wave"] == tmp_path / "g.vcd"
    assert json.loads(r.stdout)["wave"] == str(tmp_path / "g.fst")


# -- generate / demo (need the generated core) -----------------------------------------

def test_generate_verilog(tmp_path):
    out = tmp_path / "out" / "npu.v"
    r = run("generate", "-o", out)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "module fluidnpu_core" in text and "endmodule" in text
    assert "policies" in r.output and str(out) in r.output


def test_generate_rtlil_small(tmp_path, repo_root):
    out = tmp_path / "npu.il"
    r = run("generate", "--config", repo_root / "examples" / "hw_small.toml", "--rtlil", "-o", out)
    assert r.exit_code == 0, r.output
    assert "module \\fluidnpu_core" in out.read_text()


def test_generate_config_error_writes_nothing(tmp_path):
    out = tmp_path / "npu.v"
    r = run("generate", "--set", "tp=7", "-o", out)
    assert r.exit_code == 2 and "tp = 7" in r.stderr
    assert not out.exists()


def test_generate_failure_leaves_no_file(tmp_path, monkeypatch):
    mod = types.ModuleType("fluidnpu.hw.core")

    class NPUCore:
        def __init__(self, cfg):
            raise RuntimeError("elaboration failed")

    mod.NPUCore = NPUCore
    monkeypatch.setitem(sys.modules, "fluidnpu.hw.core", mod)
    out = tmp_path / "npu.v"
    r = run("generate", "-o", out)
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def fake_core(monkeypatch):
    """Install a ``fluidnpu.hw.core`` whose NPUCore is a one-register component."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class NPUCore(wiring.Component):
        a: In(8)
        y: Out(8)

        def __init__(self, cfg):
            self.cfg = cfg
            super().__init__()

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.y.eq(self.a)
            return m

    mod = types.ModuleType("fluidnpu.hw.core")
    mod.NPUCore = NPUCore
    monkeypatch.setitem(sys.modules, "fluidnpu.hw.core", mod)


@pytest.mark.parametrize("corrupt", [False, True])
def test_demo_flow_with_stand_ins(tmp_path, monkeypatch, corrupt):
    fake_core(monkeypatch)
    # the demo GEMM's roofline on the default 8 x 8 core is 3 990 cycles (compute bound)
    calls = fake_runner(monkeypatch, cycles=7980, corrupt=corrupt)
    r = run("demo", "--out-dir", tmp_path / "out")
    assert "module fluidnpu_core" in (tmp_path / "out" / "npu.v").read_text()
    (c,) = calls
    assert c["out_mode"] == OUT_REQUANT and c["bias"].shape == (23,) and c["cfg"] == HwConfig()
    if corrupt:
        assert r.exit_code == 1 and "FAIL" in r.output and "[1, 2]" in r.output
    else:
        assert r.exit_code == 0, r.output
        assert "PASS bit-exact" in r.output
        assert "cycles 7980" in r.output and "roofline efficiency 50.0%" in r.output


def test_generate_with_stand_in_core(tmp_path, monkeypatch):
    fake_core(monkeypatch)
    out = tmp_path / "npu.v"
    r = run("generate", "--set", "tr=32", "-o", out)
    assert r.exit_code == 0, r.output
    assert "module fluidnpu_core" in out.read_text()
    assert f"{out.stat().st_size:,} bytes" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["npu.v"]


@pytest.mark.rtl
def test_gemm_on_icarus(tmp_path, repo_root):
    rng = np.random.default_rng(3)
    x = npy(tmp_path, "x.npy", rng.integers(-128, 128, (9, 21)), np.int8)
    w = npy(tmp_path, "w.npy", rng.integers(-128, 128, (21, 5)), np.int8)
    b = npy(tmp_path, "b.npy", rng.integers(-5000, 5000, 5), np.int32)
    r = run(*gemm_args(x, w, tmp_path / "o.npy", "--config", repo_root / "examples" / "hw_small.toml",
                       "--bias", b, "--requant", "200,12", "--stack", "2", "--split", "2", "--json"))
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["check"] is True and d["sim"] == "icarus"
    assert 0 < d["roofline_efficiency"] <= 1


@pytest.mark.rtl
@pytest.mark.slow
def test_demo(tmp_path):
    r = run("demo", "--out-dir", tmp_path)
    assert r.exit_code == 0, r.output
    assert "PASS bit-exact" in r.output and "on verilator" in r.output     # the default simulator
    assert (tmp_path / "npu.v").stat().st_size > 0


# -- atomic writes -----------------------------------------------------------------------

def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, fail)
    assert p.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [p]
    assert atomic_write(p, lambda f: f.write(b"new!")) == 4
    assert p.read_bytes() == b"new!"


# -- metrics ---------------------------------------------------------------------------

#: the 8 x 8 core (examples/hw_8x8.toml), the configuration the figures below were worked for
BIG = HwConfig(tc=8, tp=8, mem_bytes=8)


def test_roofline_demo_shape_compute_bound():
    cfg = BIG
    # X 37*304 + W 23*304 + bias 96 + O 37*24 (int8 rows padded to 8 bytes)
    assert metrics.compulsory_bytes(cfg, 37, 300, 23, bias=True, requant=True) == 19224
    rl = metrics.roofline(cfg, 37, 300, 23, bias=True, requant=True)
    # reads 18336 bytes (2292 beats) beside writes of 888 (111 beats): the read channel's
    assert metrics.compulsory_traffic(cfg, 37, 300, 23, bias=True, requant=True) == (18336, 888)
    assert (rl.macs, rl.compute_cycles, rl.memory_cycles, rl.cycles) == (255300, 3990, 2292, 3990)
    assert rl.bound == "compute"
    # raw output: O rows of 23 int32 = 92 bytes, padded to 96
    assert metrics.compulsory_bytes(cfg, 37, 300, 23, bias=True, requant=False) == 21888


def test_roofline_memory_bound_small_config():
    cfg = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
    # X 3 rows of 5 -> 8 bytes, W 2 rows of 5 -> 8 bytes, O 3 rows of 2 -> 4 bytes
    rl = metrics.roofline(cfg, 3, 5, 2, bias=False, requant=True)
    # 40 bytes read (10 beats) and 12 written (3 beats) on channels of their own
    assert rl.bytes == 24 + 16 + 12 and rl.memory_cycles == 10
    assert rl.compute_cycles == 2 and rl.cycles == 10 and rl.bound == "memory"
    # a layer that writes more than it reads is bound by the write channel: 64 x 1 x 64,
    # X and W rows of 1 padded to 4 bytes (128 read beats), O rows of 64 raw int32 (4096)
    rl = metrics.roofline(cfg, 64, 1, 64, bias=False, requant=False)
    assert metrics.compulsory_traffic(cfg, 64, 1, 64, bias=False, requant=False) == (512, 16384)
    assert rl.memory_cycles == 4096 and rl.bound == "memory"


def test_roofline_wide_elements():
    cfg = BIG.replace(data_width=16, mem_bytes=16)
    # elem_bytes 2: X rows of 10 -> 20 -> 32 bytes; requant O rows of 3 -> 6 -> 16 bytes
    assert metrics.compulsory_bytes(cfg, 1, 10, 3, bias=True, requant=True) == 32 + 3 * 32 + 16 + 16


def test_gemm_metrics():
    m = metrics.gemm_metrics(BIG, 37, 300, 23, 7980, bias=True, requant=True)
    # tiled: one chunk, 3 column tiles, 2 row tiles: X once (37 rows x 38 beats), W and bias
    # per row tile (2 x (23 x 38 + 3 x 4)), O one beat per row and column tile (37 x 3)
    assert m == {"macs": 255300, "utilisation": pytest.approx(255300 / (7980 * 64)),
                 "roofline_cycles": 3990, "roofline_efficiency": 0.5,
                 "roofline_cycles_tiled": 3990, "tiled_bytes": 8 * (37 * 38 + 2 * (23 * 38 + 12) + 37 * 3),
                 "bound_tiled": "compute"}
    with pytest.raises(ValueError):
        metrics.gemm_metrics(HwConfig(), 1, 1, 1, 0, bias=False, requant=False)
    with pytest.raises(ValueError):
        metrics.roofline(HwConfig(), 0, 1, 1, bias=False, requant=False)
