"""The Wishbone-wrapped core (``fluidnpu generate --bus wishbone``) under cocotb: GEMMs
driven through the CSR slave, memory served through the Wishbone master, bit-exact with
the numpy reference; its cycles against the bare core's on the same memory timing; the
Verilator lint of both wrapped tops."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.reference import gemm_reference
from fluidnpu.hw.runner import MemTiming

SMALL = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)
SMALL_SETS = ["--set", "tc=4", "--set", "tp=4", "--set", "tr=8", "--set", "x_buf_elems=1024",
              "--set", "w_buf_elems=512", "--set", "mem_bytes=4"]


def _layers(cfg):
    rng = np.random.default_rng(17)
    lo, hi = cfg.data_min, cfg.data_max + 1
    a = dict(x=rng.integers(lo, hi, (10, 24)), w=rng.integers(lo, hi, (24, 6)),
             bias=rng.integers(-5000, 5000, 6), out_mode=OUT_RAW)
    b = dict(x=rng.integers(lo, hi, (13, 7)), w=rng.integers(lo, hi, (7, 9)), bias=None,
             out_mode=OUT_REQUANT, mult=91, shift=9, relu=True, bp=2)
    return [a, b]


def _expected(cfg, ly):
    return gemm_reference(cfg, ly["x"], ly["w"], ly.get("bias"), out_mode=ly["out_mode"],
                          mult=ly.get("mult", 1), shift=ly.get("shift", 0), relu=ly.get("relu", False))


@pytest.mark.rtl
def test_gemms_through_wishbone_are_bit_exact_and_cost_few_cycles_more_than_the_bare_core():
    from fluidnpu.hw.bus_runner import run_gemms_wishbone
    from fluidnpu.hw.gemm_runner import GemmCase, run_gemms
    cfg, timing = SMALL, MemTiming(latency=8)
    layers = _layers(cfg)
    run = run_gemms_wishbone(cfg, layers, sim="icarus", mem=timing)
    for i, ly in enumerate(layers):
        assert np.array_equal(run.outs[i], _expected(cfg, ly)), f"layer {i}"
    # the bare core on the same memory timing (each layer on its own image: the cycle count
    # does not depend on where the arrays sit)
    bare = run_gemms(cfg, [GemmCase(x=ly["x"], w=ly["w"], bias=ly.get("bias"), out_mode=ly["out_mode"],
                                    mult=ly.get("mult", 1), shift=ly.get("shift", 0),
                                    relu=ly.get("relu", False), bp=ly.get("bp", 1)) for ly in layers],
                     sim="icarus", mem=timing)
    for i, (wb, b) in enumerate(zip(run.cycles, (r.cycles for r in bare))):
        # one more cycle on every read answer and write answer, and reads and writes
        # sharing one bus: a few percent (docs/bus.md), never fewer cycles
        assert b < wb <= 1.1 * b + 10, f"layer {i}: {wb} cycles through the bus, {b} bare"


@pytest.mark.rtl
def test_stalls_and_gaps_on_the_memory_bus_keep_results_exact():
    """Random STALL and held-back ACKs (probability 0.3) and one request per 2 cycles: the
    master holds stalled requests unchanged (the memory model checks it) and routes every
    answer to the right stream."""
    from fluidnpu.hw.bus_runner import run_gemms_wishbone
    cfg = SMALL
    layers = _layers(cfg)
    run = run_gemms_wishbone(cfg, layers, sim="icarus",
                             mem=MemTiming(latency=5, interval=2, backpressure=0.3, seed=3))
    for i, ly in enumerate(layers):
        assert np.array_equal(run.outs[i], _expected(cfg, ly)), f"layer {i}"


@pytest.mark.rtl
@pytest.mark.parametrize("top", ["core", "npu"])
def test_wrapped_tops_lint_clean(top):
    from fluidnpu.cli import main
    extra = ["--set", "b_max=4", "--set", "net_entries=8", "--set", "max_classes=8"] if top == "npu" else []
    r = CliRunner().invoke(main, ["lint", "--bus", "wishbone", "--top", top, *SMALL_SETS, *extra])
    assert r.exit_code == 0, r.output
    assert "explained in docs/lint.md" in r.output and "UNUSEDSIGNAL" in r.output
