"""Run GEMM layers on the generated core in an HDL simulator (Icarus or Verilator) via cocotb.

``run_gemm`` runs one layer, ``run_gemms`` many in one simulator launch (one cocotb test
per case, each with its own reset, memory image and memory timing). The core's simulator
model is built and cached by :func:`fluidnpu.hw.runner.build_core`. Per-run data goes
through a run directory (``params.json`` + ``mem_<i>.npy``) named by
``FLUIDNPU_RUN_DIR``; see :mod:`fluidnpu.hw.tb.gemm_tb`. The whole NPU with its FBE runs
through :mod:`fluidnpu.hw.fbe_runner`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import HwConfig
from .interface import OUT_RAW
from .layout import GemmImage, compulsory_traffic, gemm_image, roundup
from .runner import TOP, MemTiming, SimError, _check_sim, build_core, recorded_wave, run_cocotb, run_folder

__all__ = ["GemmCase", "GemmRun", "run_gemm", "run_gemms", "check_gemm_run", "layer_timeout",
           "policy_compute_cycles"]


@dataclass
class GemmCase:
    """One layer for :func:`run_gemms` (``mem`` overrides the run's timing for this case;
    ``base``/``gap``/``seed`` are passed to :func:`fluidnpu.hw.layout.gemm_image`)."""

    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray | None = None
    out_mode: int = OUT_RAW
    mult: int = 1
    shift: int = 0
    relu: bool = False
    bp: int = 1
    k: int = 1
    mem: MemTiming | None = None
    base: int = 0
    gap: int = 0
    seed: int = 0
    name: str | None = None


@dataclass
class GemmRun:
    """The result of one layer: ``out`` as read back from memory (int64, R x C) and
    ``cycles`` from the cycle the command was accepted to the cycle ``busy`` fell."""

    out: np.ndarray | None
    cycles: int | None
    sim: str
    wave: Path | None
    image: GemmImage
    mem: np.ndarray | None            #: the memory after the run
    run_dir: Path | None = None
    error: str | None = None          #: failure message (only with ``check=False``)
    mem_stats: dict = field(default_factory=dict)
    #: chained runs: the launch's initial memory and the bytes any of its layers may write
    initial: np.ndarray | None = None
    allowed: np.ndarray | None = None


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def policy_compute_cycles(cfg: HwConfig, R: int, P: int, C: int, bp: int, k: int) -> int:
    """Array cycles of the documented tiling (docs/architecture.md, "Tiling"), no stalls."""
    seg = cfg.tp // bp
    S = k * seg
    F = cfg.tc // k
    tr = cfg.tile_rows(P, k)
    chunks = cfg.chunk_sizes(P, k, tr)
    total = 0
    for rows in cfg.row_tile_sizes(R, tr):
        n_g = _ceil(rows, bp)
        total += _ceil(C, F) * sum(n_g * _ceil(ln, S) for ln in chunks)
    return total


def layer_timeout(cfg: HwConfig, R: int, P: int, C: int, *, bias: bool, out_mode: int,
                  bp: int, k: int, mem: MemTiming) -> int:
    """Cycle budget of one layer before the bench declares a hang: 50x a generous
    estimate (compute of the policy plus every step's loads, at the memory's bandwidth
    derated by backpressure) plus 10000 cycles and the memory latencies."""
    M = cfg.mem_bytes
    F = cfg.tc // k
    n_ct = _ceil(C, F)
    n_rt = _ceil(R, cfg.tile_rows(P, k))
    rd, wr = compulsory_traffic(cfg, R, P, C, bias, out_mode)
    x_bytes = R * roundup(P * cfg.elem_bytes, M)
    w_bytes = C * roundup(P * cfg.elem_bytes, M) + (roundup(4 * C, M) if bias else 0)
    rd_beats = (x_bytes * n_ct + w_bytes * n_rt) // M
    wr_beats = wr // M
    derate = 1.0 / (1.0 - mem.backpressure) ** 2
    mem_cycles = int((rd_beats + wr_beats) * mem.interval * derate)
    lat = mem.latency + (mem.wr_latency or mem.latency)
    est = policy_compute_cycles(cfg, R, P, C, bp, k) + mem_cycles
    return 50 * est + 10000 + 4 * lat


def _as_case(c) -> GemmCase:
    if isinstance(c, GemmCase):
        return c
    if isinstance(c, dict):
        return GemmCase(**c)
    raise TypeError(f"run_gemms: a case must be a GemmCase or a dict, not {type(c).__name__}")


def run_gemms(cfg: HwConfig, cases: Sequence[GemmCase | dict], *, sim: str = "icarus",
              mem: MemTiming = MemTiming(), wave: str | Path | None = None,
              core: Callable[[HwConfig], object] | None = None, run_dir: str | Path | None = None,
              check: bool = True, keep: bool = False, chain: bool = False) -> list[GemmRun]:
    """Run many layers in one simulator launch (one build, one process).

    By default each case is a separate cocotb test: reset, fresh memory image, its own
    memory timing (``case.mem`` or ``mem``). With ``chain=True`` all cases are laid out
    one after the other in one memory and run back to back as one test, without a reset
    in between (timing ``mem``; ``case.mem`` is not allowed); every run then carries the
    shared final memory. With ``check=True`` a :class:`SimError` listing every failing
    case is raised after all ran; with ``check=False`` failures are reported in
    ``GemmRun.error``. ``wave`` records one waveform of the whole launch (Icarus writes
    FST, Verilator VCD; the suffix is corrected to the real format). ``run_dir`` defaults
    to a temporary directory, removed after a successful run unless ``keep``.
    """
    _check_sim(sim)
    cases = [_as_case(c) for c in cases]
    if not cases:
        return []
    images: list[GemmImage] = []
    layers = []
    offset = 0
    for i, c in enumerate(cases):
        if chain and c.mem is not None:
            raise ValueError(f"run_gemms: case {i} sets its own memory timing; chained cases "
                             f"share the run's timing")
        im = gemm_image(cfg, c.x, c.w, c.bias, out_mode=c.out_mode, base=offset + c.base,
                        gap=c.gap, seed=c.seed)
        if chain:
            offset = im.size
        t = c.mem or mem
        timeout = layer_timeout(cfg, im.R, im.P, im.C, bias=im.bias_en, out_mode=c.out_mode,
                                bp=c.bp, k=c.k, mem=t)
        images.append(im)
        layers.append({"desc": hex(im.desc(mult=c.mult, shift=c.shift, relu=c.relu, bp=c.bp,
                                           k=c.k)),
                       "timeout": timeout, "shape": [im.R, im.P, im.C], "policy": [c.bp, c.k],
                       "name": c.name or f"case{i}", "timing": t.to_dict()})
    if chain:
        merged = np.zeros(images[-1].size, dtype=np.uint8)
        start = 0
        for im in images:            # each image's own bytes start where the previous ended
            merged[start:im.size] = im.mem[start:im.size]
            start = im.size
        allowed = np.zeros(merged.size, dtype=bool)
        for im in images:
            allowed[:im.size] |= im.out_mask()
        mems = [merged]
        spec_cases = [{"name": "chain", "mem_file": "mem_0.npy", "out_file": "out_0.npy",
                       "timing": mem.to_dict(), "layers": layers}]
        where = [(0, i) for i in range(len(cases))]           # (test index, layer index)
    else:
        mems = [im.mem for im in images]
        spec_cases = [{"name": ly["name"], "mem_file": f"mem_{i}.npy", "out_file": f"out_{i}.npy",
                       "timing": ly["timing"], "layers": [ly]} for i, ly in enumerate(layers)]
        where = [(i, 0) for i in range(len(cases))]
    bdir = build_core(cfg, sim, waves=wave is not None, core=core)
    with run_folder(run_dir, "fluidnpu-run-") as (rdir, tmp):   # removed on Ctrl-C, SIGTERM, errors
        for i, m in enumerate(mems):
            np.save(rdir / f"mem_{i}.npy", m)
        (rdir / "params.json").write_text(json.dumps({"cfg": cfg.to_dict(), "cases": spec_cases},
                                                     indent=1))
        res = run_cocotb(sim, bdir, TOP, "fluidnpu.hw.tb.gemm_tb", rdir,
                         extra_env={"FLUIDNPU_RUN_DIR": str(rdir)}, wave=wave)
        wave_path = recorded_wave(sim, wave)
        try:
            summary = json.loads((rdir / "result.json").read_text())
        except (OSError, ValueError):
            summary = {"cases": {}}
        runs: list[GemmRun] = []
        failures = []
        for i, (im, ly, (ti, li)) in enumerate(zip(images, layers, where)):
            tname = f"case_{ti:04d}"
            err = res.get(tname, f"cocotb test {tname} did not run")
            info = summary["cases"].get(str(ti), {})
            out_file = rdir / spec_cases[ti]["out_file"]
            out_mem = np.load(out_file) if out_file.is_file() else None
            cyc = info.get("cycles") or []
            run = GemmRun(out=im.read_out(out_mem) if out_mem is not None else None,
                          cycles=cyc[li] if li < len(cyc) else None, sim=sim, wave=wave_path,
                          image=im, mem=out_mem, run_dir=None if (tmp and not keep) else rdir,
                          error=err, mem_stats=info.get("mem_stats", {}))
            if chain:
                run.initial = mems[0]
                run.allowed = allowed
            if err is not None:
                failures.append(f"[{ly['name']}: R,P,C={tuple(ly['shape'])} (bp,k)={tuple(ly['policy'])}"
                                f"{f' layer {li}' if chain else ''}] {err}")
            runs.append(run)
        if chain and failures:
            failures = failures[:1]          # one test: the same message for every layer
        if failures:
            for r in runs:
                r.run_dir = rdir
            if check:
                raise SimError(f"{sim}: {len(failures)} of {len(spec_cases)} GEMM test(s) failed "
                               f"(run dir {rdir}):\n" + "\n".join(failures) +
                               f"\n(simulator log: {rdir / 'sim.log'})")
        elif tmp and not keep:
            shutil.rmtree(rdir, ignore_errors=True)
    return runs


def run_gemm(cfg: HwConfig, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, *,
             out_mode: int = OUT_RAW, mult: int = 1, shift: int = 0, relu: bool = False,
             bp: int = 1, k: int = 1, sim: str = "icarus", wave: str | Path | None = None,
             mem: MemTiming = MemTiming(), core: Callable[[HwConfig], object] | None = None,
             run_dir: str | Path | None = None) -> GemmRun:
    """Run one layer on the simulated core; raises :class:`SimError` on any failure."""
    case = GemmCase(x=x, w=w, bias=bias, out_mode=out_mode, mult=mult, shift=shift, relu=relu,
                    bp=bp, k=k)
    return run_gemms(cfg, [case], sim=sim, mem=mem, wave=wave, core=core, run_dir=run_dir)[0]


def check_gemm_run(run: GemmRun, expected: np.ndarray, *, limit: int = 8) -> None:
    """Assert that a run produced exactly ``expected`` and wrote nothing but O's elements.

    Raises ``AssertionError`` naming the first mismatching elements / stray bytes.
    """
    if run.error is not None:
        raise AssertionError(f"run failed: {run.error}")
    if run.mem is None or run.out is None:
        raise AssertionError("run has no output memory")
    exp = np.asarray(expected, dtype=np.int64)
    got = run.image.read_out(run.mem)
    if got.shape != exp.shape:
        raise AssertionError(f"output shape {got.shape}, expected {exp.shape}")
    problems = []
    bad = np.argwhere(got != exp)
    if bad.size:
        items = ", ".join(f"O[{r},{c}] = {got[r, c]} (expected {exp[r, c]})"
                          for r, c in bad[:limit])
        problems.append(f"{len(bad)} of {exp.size} output elements differ: {items}")
    if run.initial is not None:
        initial, allowed = run.initial, run.allowed
    else:
        initial, allowed = run.image.mem, run.image.out_mask()
    if initial.shape != run.mem.shape:
        raise AssertionError(f"memory of {run.mem.size} bytes, expected {initial.size}")
    stray = [int(a) for a in np.flatnonzero((run.mem != initial) & ~allowed)[:limit]]
    if stray:
        items = ", ".join(f"{a:#x}: {initial[a]:#04x} -> {run.mem[a]:#04x}" for a in stray)
        problems.append(f"bytes outside O's elements were changed: {items}")
    if problems:
        raise AssertionError("; ".join(problems))
