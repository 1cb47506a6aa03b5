"""cocotb bench of the NPU core (``fluidnpu_core``): runs GEMM layers from a run directory.

The run directory (env ``FLUIDNPU_RUN_DIR``, written by :mod:`fluidnpu.hw.gemm_runner`) holds
``params.json``::

    {"cfg": {...HwConfig fields...},
     "cases": [{"name": str, "mem_file": "mem_0.npy", "out_file": "out_0.npy",
                "timing": {latency, interval, backpressure, seed, wr_latency, depth, wr_depth},
                "layers": [{"desc": "0x...", "timeout": cycles, ...}, ...]}, ...]}

Every case is one cocotb test ``case_<i>`` (4 digits): clock, reset (5 cycles), a fresh
:class:`~fluidnpu.hw.tb.memory.MemoryModel` over the case's memory image, then its layers
back to back on that memory (so a layer may read what the previous one wrote). For each
layer the bench offers the packed descriptor on ``cmd`` until it is accepted (in cycle
``a``: ``valid & ready``), then waits for the first cycle ``b > a`` in which ``busy`` is
0; the layer's ``cycles`` is ``b - a`` (cycle numbers as in the memory model). Checks:
``busy`` is 1 in cycle ``a+1``; when ``busy`` falls every read response and write
acknowledgement has been transferred; after the last layer no request is made for
``2*latency + 16`` cycles; the timeout of each layer; the memory model's protocol checks.

Results: ``out_<i>.npy`` (the memory after the case, written even when it fails) and
``result.json`` (``{"cases": {"<i>": {"cycles": [...], "mem_stats": {...}}}}``), updated
after every case.
"""
from __future__ import annotations

import json

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from fluidnpu.hw.tb.common import load_params
from fluidnpu.hw.tb.memory import MemoryModel

RESET_CYCLES = 5
CLOCK_NS = 10


class BenchError(AssertionError):
    """The core misbehaved (timeout, busy protocol, X on a control output)."""


RUN_DIR, PARAMS = load_params()
_RESULTS: dict = {"cases": {}}


def _write_results() -> None:
    tmp = RUN_DIR / "result.json.tmp"
    tmp.write_text(json.dumps(_RESULTS, indent=1))
    tmp.replace(RUN_DIR / "result.json")


def _bit(sig, what: str) -> int:
    v = sig.value
    try:
        return int(v)
    except ValueError:
        raise BenchError(f"{what} is X/Z ({v})") from None


async def _run_layer(dut, model: MemoryModel, desc: int, timeout: int, label: str) -> int:
    clk = dut.clk
    edge = RisingEdge(clk)
    await edge
    dut.cmd__payload.value = desc
    dut.cmd__valid.value = 1
    start = model.cycle
    while True:
        await ReadOnly()
        if _bit(dut.cmd__ready, "cmd.ready"):
            accepted = model.cycle
            break
        if model.cycle - start > timeout:
            raise BenchError(f"{label}: the command was not accepted within {timeout} cycles "
                             f"(cycle {model.cycle}, busy = {dut.busy.value})")
        await edge
    await edge
    dut.cmd__valid.value = 0
    while True:
        await ReadOnly()
        busy = _bit(dut.busy, "busy")
        if model.cycle == accepted + 1 and not busy:
            raise BenchError(f"{label}: busy is 0 in cycle {model.cycle}, the cycle after the "
                             f"command was accepted (cycle {accepted})")
        if not busy:
            end = model.cycle
            break
        if model.cycle - accepted > timeout:
            raise BenchError(f"{label}: timeout: busy still high {timeout} cycles after the command "
                             f"was accepted (cycle {accepted}); memory: {model.stats}")
        await edge
    if not model.idle:
        raise BenchError(f"{label}: busy fell in cycle {end} with memory traffic outstanding: "
                         f"{model.stats} (reads {len(model.rd.queue)} / writes "
                         f"{len(model.wr.queue)} not yet answered)")
    return end - accepted


async def run_case(dut, idx: int) -> None:
    case = PARAMS["cases"][idx]
    cfg = PARAMS["cfg"]
    t = case["timing"]
    label = f"case {idx} ({case['name']})"
    mem = np.load(RUN_DIR / case["mem_file"]).astype(np.uint8).ravel().copy()
    res = {"name": case["name"], "cycles": [], "mem_stats": {}}
    _RESULTS["cases"][str(idx)] = res

    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    dut.cmd__payload.value = 0
    dut.gather__addr.value = 0
    MemoryModel.drive_idle(dut)
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    model = MemoryModel(dut, mem, mem_bytes=cfg["mem_bytes"], addr_width=cfg["addr_width"],
                        latency=t["latency"], interval=t["interval"],
                        backpressure=t["backpressure"], seed=t["seed"],
                        wr_latency=t.get("wr_latency"), depth=t.get("depth"),
                        wr_depth=t.get("wr_depth"))
    model.start()
    try:
        for li, layer in enumerate(case["layers"]):
            cyc = await _run_layer(dut, model, int(layer["desc"], 16), int(layer["timeout"]),
                                   f"{label} layer {li}")
            res["cycles"].append(cyc)
            res["mem_stats"] = model.stats
            dut._log.info("%s layer %d: %d cycles, %s", label, li, cyc, model.stats)
        quiet = 2 * max(t["latency"], t.get("wr_latency") or 0) + 16
        for _ in range(quiet):
            await RisingEdge(dut.clk)
            await ReadOnly()
            for name in ("rd_req", "wr_req"):
                if _bit(getattr(dut, f"mem__{name}__valid"), f"{name}.valid"):
                    raise BenchError(f"{label}: {name} request in cycle {model.cycle}, after the "
                                     f"last layer finished (busy low)")
        res["mem_stats"] = model.stats
    finally:
        np.save(RUN_DIR / case["out_file"], mem)
        _write_results()


def _make_test(idx: int):
    async def case_test(dut):
        await run_case(dut, idx)
    case_test.__name__ = case_test.__qualname__ = f"case_{idx:04d}"
    return cocotb.test(name=f"case_{idx:04d}")(case_test)


if PARAMS is not None:
    for _i in range(len(PARAMS["cases"])):
        globals()[f"case_{_i:04d}"] = _make_test(_i)
else:
    @cocotb.test()
    async def missing_run_dir(dut):
        raise BenchError("FLUIDNPU_RUN_DIR is not set: run this bench through "
                         "fluidnpu.hw.gemm_runner.run_gemms")
