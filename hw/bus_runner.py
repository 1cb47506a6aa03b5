"""Run GEMM layers on the bus-wrapped core (``fluidnpu_core_wb``) in an HDL simulator: the
host side through the Wishbone CSR slave, memory through the Wishbone master
(bench: :mod:`fluidnpu.hw.tb.wb_tb`)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import HwConfig
from .interface import OUT_RAW
from .layout import GemmImage, gemm_image, unpack_desc
from .runner import MemTiming, SimError, _check_sim, _rtl_sources_hash, build_design, run_cocotb, run_folder

__all__ = ["BusGemmRun", "BusNetworkRun", "run_gemms_wishbone", "run_network_wishbone", "TOP_WB", "TOP_NPU_WB"]

TOP_WB = "fluidnpu_core_wb"


@dataclass
class BusGemmRun:
    """Layers run back to back on one memory image: outputs read back (int64, R x C per
    layer), ``cycles`` per layer as the LAST_CYCLES register counted them."""

    outs: list[np.ndarray]
    cycles: list[int]
    images: list[GemmImage]
    mem: np.ndarray
    mem_stats: dict


def _run_bench(sim: str, bdir: Path, top: str, module: str, rdir: Path, what: str) -> dict:
    """Run a bench of this module in ``rdir`` (it finds the folder in ``FLUIDNPU_RUN_DIR``)
    and return the ``result.json`` it wrote; any failed cocotb test is a :class:`SimError`."""
    res = run_cocotb(sim, bdir, top, module, rdir, extra_env={"FLUIDNPU_RUN_DIR": str(rdir)})
    bad = {k: v for k, v in res.items() if v is not None}
    if bad:
        raise SimError(f"{sim}: {what} failed (run dir {rdir}): {bad}\n"
                       f"(simulator log: {rdir / 'sim.log'})")
    return json.loads((rdir / "result.json").read_text())


def build_wishbone_core(cfg: HwConfig, sim: str) -> Path:
    def make_verilog() -> str:
        from amaranth.back import verilog
        from .bus_top import WishboneCore
        return verilog.convert(WishboneCore(cfg), name=TOP_WB)
    return build_design(sim, TOP_WB, f"{cfg.key()}|src={_rtl_sources_hash()}", make_verilog)


def run_gemms_wishbone(cfg: HwConfig, layers: Sequence[dict], *, sim: str = "icarus",
                       mem: MemTiming = MemTiming(), run_dir: str | Path | None = None) -> BusGemmRun:
    """Run ``layers`` (dicts: ``x``, ``w`` and optionally ``bias``, ``out_mode``, ``mult``,
    ``shift``, ``relu``, ``bp``, ``k``) one after the other, each in its own memory region,
    in one simulation; raises :class:`SimError` on any failure."""
    from .gemm_runner import layer_timeout
    from .regmap import regmap
    from .regmap_render import to_python
    _check_sim(sim)
    if not layers:
        raise ValueError("run_gemms_wishbone: no layers")
    images, specs, offset = [], [], 0
    for ly in layers:
        kw = {k: ly[k] for k in ("mult", "shift", "relu", "bp", "k") if k in ly}
        out_mode = ly.get("out_mode", OUT_RAW)
        im = gemm_image(cfg, ly["x"], ly["w"], ly.get("bias"), out_mode=out_mode, base=offset)
        offset = im.size
        images.append(im)
        timeout = layer_timeout(cfg, im.R, im.P, im.C, bias=im.bias_en, out_mode=out_mode,
                                bp=kw.get("bp", 1), k=kw.get("k", 1), mem=mem)
        specs.append({"fields": unpack_desc(cfg, im.desc(**kw)), "timeout": timeout})
    image = np.zeros(images[-1].size, dtype=np.uint8)
    start = 0
    for im in images:
        image[start:im.size] = im.mem[start:im.size]
        start = im.size
    bdir = build_wishbone_core(cfg, sim)
    with run_folder(run_dir, "fluidnpu-wb-") as (rdir, tmp):
        np.save(rdir / "mem.npy", image)
        (rdir / "regs.py").write_text(to_python(regmap(cfg, "core")))
        (rdir / "params.json").write_text(json.dumps({"cfg": cfg.to_dict(), "timing": mem.to_dict(),
                                                      "layers": specs}, indent=1))
        summary = _run_bench(sim, bdir, TOP_WB, "fluidnpu.hw.tb.wb_tb", rdir, "the Wishbone bench")
        out_mem = np.load(rdir / "out.npy")
        run = BusGemmRun(outs=[im.read_out(out_mem) for im in images], cycles=summary["cycles"],
                         images=images, mem=out_mem, mem_stats=summary["mem_stats"])
        if tmp:
            shutil.rmtree(rdir, ignore_errors=True)
    return run


TOP_NPU_WB = "fluidnpu_npu_wb"


@dataclass
class BusNetworkRun:
    """A network job run by the host driver on the wrapped NPU: ``run`` in the shape of
    the direct-port bench's (:class:`~.fbe_runner.NetworkRun`, so the same checks apply;
    ``cycles`` is the NPU cycle of the last result, from ``cycle0``), plus the host's
    register ``accesses`` and the cycle (from ``cycle0``) each sample's ADMIT was pushed."""

    run: "NetworkRun"
    accesses: int
    reads: int
    writes: int
    admitted_at: dict


def build_wishbone_npu(cfg: HwConfig, sim: str) -> Path:
    def make_verilog() -> str:
        from amaranth.back import verilog
        from .bus_top import WishboneNPU
        return verilog.convert(WishboneNPU(cfg), name=TOP_NPU_WB)
    return build_design(sim, TOP_NPU_WB, f"{cfg.key()}|src={_rtl_sources_hash()}", make_verilog)


def run_network_wishbone(job, *, sim: str = "icarus", mem: MemTiming = MemTiming(),
                         run_dir: str | Path | None = None) -> BusNetworkRun:
    """Run a :class:`~.fbe_runner.NetworkJob` on ``fluidnpu_npu_wb`` through the host
    driver (bench :mod:`fluidnpu.hw.tb.board_tb`): program, table, memory image and
    admissions through the CSR slave and the transport, memory through the Wishbone
    master. Only the greedy host scheduler of :func:`fluidnpu.board.session.run_job` is
    used (``job.sched``, ``reset_at`` and ``step`` are not supported: they raise)."""
    from .fbe_runner import NetworkRun
    from .regmap import regmap
    from .regmap_render import to_python
    _check_sim(sim)
    if job.reset_at is not None or job.step:
        raise ValueError("run_network_wishbone: reset_at and step are not supported by the host loop")
    bdir = build_wishbone_npu(job.cfg, sim)
    with run_folder(run_dir, "fluidnpu-npuwb-") as (rdir, tmp):
        np.save(rdir / "mem.npy", np.asarray(job.mem, dtype=np.uint8))
        (rdir / "regs.py").write_text(to_python(regmap(job.cfg, "npu")))
        (rdir / "params.json").write_text(json.dumps({
            "cfg": job.cfg.to_dict(), "timing": mem.to_dict(), "entries": [hex(e) for e in job.entries],
            "table": [list(t) for t in job.table], "res_addr": job.res_addr, "res_shift": job.res_shift,
            "arrivals": [list(a) for a in job.arrivals], "max_cycles": job.max_cycles}))
        out = _run_bench(sim, bdir, TOP_NPU_WB, "fluidnpu.hw.tb.board_tb", rdir, "the host-driver bench")
        run = NetworkRun(results=out["results"], events=out["events"], violations=[], lost=[],
                         max_b=out["max_b"], final_status=out["final_fbe"], cycles=out["end"],
                         cycle0=out["cycle0"], mem=np.load(rdir / "out.npy"), sim=sim,
                         run_dir=None if tmp else rdir, mem_stats=out["mem_stats"])
        if tmp:
            shutil.rmtree(rdir, ignore_errors=True)
    return BusNetworkRun(run=run, accesses=out["accesses"], reads=out["reads"], writes=out["writes"],
                         admitted_at={int(k): v for k, v in out["admitted_at"].items()})
