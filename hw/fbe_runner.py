"""Run the NPU with its FBE (:class:`~.fbe.FluidNPU`) under cocotb: build once per
configuration, then one simulator launch per job (see :mod:`fluidnpu.hw.tb.fbe_tb`)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import HwConfig
from .runner import (MemTiming, SimError, _check_sim, _rtl_sources_hash, build_design, recorded_wave,
                     run_cocotb, run_folder)

__all__ = ["FBE_TOP", "NetworkJob", "NetworkRun", "build_fbe", "run_network_job"]

FBE_TOP = "fluidnpu_fbe"


@dataclass
class NetworkJob:
    """Everything the bench needs, in hardware terms (no model objects)."""
    cfg: HwConfig
    entries: list[int]                          #: packed program entries
    table: list[tuple[int, int, int]]           #: (b, lid, word)
    res_addr: int
    res_shift: int
    mem: np.ndarray                             #: initial memory image, uint8
    arrivals: list[tuple[int, int, int]]        #: (cycle, tag, x_addr), sorted by cycle
    sched: dict = field(default_factory=lambda: {"mode": "greedy", "seed": 0, "odd": 0.0, "gap": 0})
    reset_at: int | None = None
    max_cycles: int = 2_000_000
    step: bool = False                          #: run the FBE in step mode


@dataclass
class NetworkRun:
    results: list[dict]
    events: list[dict]
    violations: list[str]
    lost: list[int]
    max_b: int
    final_status: dict
    cycles: int
    cycle0: int                  #: the NPU's cycle counter at the bench's cycle 0
    mem: np.ndarray
    sim: str
    run_dir: Path | None = None
    mem_stats: dict = field(default_factory=dict)
    wave: Path | None = None          #: the waveform file, when one was asked for


def build_fbe(cfg: HwConfig, sim: str = "icarus", *, fault: str | None = None, waves: bool = False) -> Path:
    def make_verilog() -> str:
        from amaranth.back import verilog
        from .fbe import FluidNPU
        return verilog.convert(FluidNPU(cfg, fault=fault), name=FBE_TOP)

    key = f"{cfg.key()}|src={_rtl_sources_hash()}|fault={fault}"
    return build_design(sim, FBE_TOP, key, make_verilog, waves=waves)


def run_network_job(job: NetworkJob, *, sim: str = "icarus", mem: MemTiming = MemTiming(),
                    fault: str | None = None, run_dir: str | Path | None = None, keep: bool = False,
                    wave: str | Path | None = None) -> NetworkRun:
    """Build (cached) and run one job; raises :class:`SimError` if the bench fails.
    ``wave``: record the whole run's waveform there (FST on Icarus, VCD on Verilator)."""
    _check_sim(sim)
    bdir = build_fbe(job.cfg, sim, fault=fault, waves=wave is not None)
    with run_folder(run_dir, "fluidnpu-fbe-") as (rdir, tmp):   # removed on Ctrl-C, SIGTERM, errors
        np.save(rdir / "mem.npy", np.asarray(job.mem, dtype=np.uint8))
        params = {"cfg": job.cfg.to_dict(), "entries": [hex(e) for e in job.entries],
                  "table": [list(t) for t in job.table], "res_addr": job.res_addr, "res_shift": job.res_shift,
                  "mem_file": "mem.npy", "out_file": "out.npy", "timing": mem.to_dict(),
                  "arrivals": [list(a) for a in job.arrivals], "sched": job.sched,
                  "reset_at": job.reset_at, "max_cycles": job.max_cycles, "step": int(job.step)}
        (rdir / "params.json").write_text(json.dumps(params))
        res = run_cocotb(sim, bdir, FBE_TOP, "fluidnpu.hw.tb.fbe_tb", rdir,
                         extra_env={"FLUIDNPU_RUN_DIR": str(rdir)}, wave=wave)
        wave_path = recorded_wave(sim, wave)
        err = res.get("network", "cocotb test 'network' did not run")
        if err is not None:
            raise SimError(f"{sim}: the FBE bench failed (run dir {rdir}): {err}\n(simulator log: {rdir / 'sim.log'}"
                           f"{f'; waveform: {wave_path}' if wave_path else ''})")
        out = json.loads((rdir / "result.json").read_text())
        run = NetworkRun(results=out["results"], events=out["events"], violations=out["violations"],
                         lost=out["lost"], max_b=out["max_b"], final_status=out["final_status"],
                         cycles=out["cycles"], cycle0=out["cycle0"], mem=np.load(rdir / "out.npy"), sim=sim,
                         run_dir=None if (tmp and not keep) else rdir, mem_stats=out["mem_stats"],
                         wave=wave_path)
        if tmp and not keep:
            shutil.rmtree(rdir, ignore_errors=True)
    return run
