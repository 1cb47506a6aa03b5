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

__all__ = ["BusGemmRun", "run_gemms_wishbone", "TOP_WB"]

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
        res = run_cocotb(sim, bdir, TOP_WB, "fluidnpu.hw.tb.wb_tb", rdir,
                         extra_env={"FLUIDNPU_RUN_DIR": str(rdir)})
        bad = {k: v for k, v in res.items() if v is not None}
        if bad:
            raise SimError(f"{sim}: the Wishbone bench failed (run dir {rdir}): {bad}\n"
                           f"(simulator log: {rdir / 'sim.log'})")
        out_mem = np.load(rdir / "out.npy")
        summary = json.loads((rdir / "result.json").read_text())
        run = BusGemmRun(outs=[im.read_out(out_mem) for im in images], cycles=summary["cycles"],
                         images=images, mem=out_mem, mem_stats=summary["mem_stats"])
        if tmp:
            shutil.rmtree(rdir, ignore_errors=True)
    return run
