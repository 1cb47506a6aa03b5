"""The work of one sweep task, run in a worker process (local or Dask): a synthesis run
or a point's cycle model and serving simulation. Each returns a record and never raises."""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from .sweep_file import _build_scenario, _model

__all__ = ["evaluate_synth", "evaluate_point"]


def evaluate_synth(job: dict, out_root: str | None = None) -> dict:
    """Synthesise one hardware configuration; returns a record (never raises)."""
    t0 = time.time()
    rec = {"kind": "synth", "id": job["id"], "label": job["label"], "host": socket.gethostname(),
           "pid": os.getpid(), "started": t0}
    with _recording(rec, t0):
        from fluidnpu.hw.config import HwConfig
        from fluidnpu.synth.flow import synthesize
        cfg = HwConfig(**job["hw"])
        s = job["synth"]
        out_dir = Path(out_root) / "synth" / job["id"] if out_root else None
        r = synthesize(cfg, s["target"], out_dir, seed=s["seed"], seeds=s.get("seeds"),
                       target_mhz=s["target_mhz"],
                       pack_only=s["pack_only"], bitstream=s["bitstream"], timeout=s["timeout_s"],
                       placer=s.get("placer", "auto"), router=s.get("router", "auto"),
                       floorplan=s.get("floorplan", "auto"))
        rec["metrics"] = {
            "target": r.target, "luts": r.luts, "ffs": r.ffs, "dsps": r.dsps, "brams": r.brams,
            "lut_util": r.util.get("luts"), "ff_util": r.util.get("ffs"), "dsp_util": r.util.get("dsps"),
            "bram_util": r.util.get("brams"), "fmax_mhz": r.fmax_mhz, "target_mhz": r.target_mhz,
            "timing_met": r.timing_met, "fits": r.fits, "fit_reason": r.reason,
            "synth_seed": r.seed, "routed": r.routed, "fmax_placed_mhz": r.fmax_placed_mhz,
            "router": r.router,
            "seed_fmax": "; ".join(f"{k}: {v}" for k, v in r.seed_fmax.items()),
            "synth_s": r.elapsed_s, "synth_cached": r.cached, "synth_dir": r.out_dir,
            "tools": "; ".join(f"{k} {v}" for k, v in r.tool_versions.items()),
        }
    return rec


@contextmanager
def _recording(rec: dict, t0: float):
    """A task's body: ``rec["ok"]``, or the failure recorded instead of raised (Ctrl-C
    still stops the sweep); the elapsed time either way."""
    try:
        yield
        rec["ok"] = True
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a record of the failure, not a crash of the sweep
        _record_failure(rec, e)
    finally:
        rec["elapsed_s"] = round(time.time() - t0, 3)


def _record_failure(rec: dict, e: BaseException) -> None:
    """Mark ``rec`` failed with the error and a short traceback (called from the handler)."""
    rec["ok"] = False
    rec["error"] = f"{type(e).__name__}: {e}"
    rec["traceback"] = traceback.format_exc(limit=6)


@lru_cache(maxsize=32)
def _plan(hw_json: str, model_ref: str, mapping: str, b_max: int):
    from fluidnpu.hw.config import HwConfig
    from fluidnpu.sched.mapper import map_model
    return map_model(HwConfig(**json.loads(hw_json)), _model(model_ref), mapping, b_max=b_max)


def _perf_metrics(plan, cfg, batches) -> dict:
    out = {}
    model = plan.model
    for b in batches:
        cyc = plan.exit_path_cycles(b)[-1] if model.exits else sum(p.cycles for p in plan.layers[b - 1])
        macs = sum(p.macs for p in plan.layers[b - 1]) + sum(p.macs for h in plan.heads[b - 1] for p in h)
        out[f"perf_b{b}_cycles"] = int(cyc)
        out[f"perf_b{b}_util"] = macs / (cyc * cfg.lanes) if cyc else float("nan")
        out[f"perf_b{b}_ms"] = cyc / (cfg.clock_mhz * 1e3)
    return out


def evaluate_point(job: dict) -> dict:
    """The cycle model / mapper and the serving simulator for one point; returns a record (never raises)."""
    t0 = time.time()
    rec = {"kind": "point", "id": job["id"], "params": job["params"], "host": socket.gethostname(),
           "pid": os.getpid(), "started": t0}
    with _recording(rec, t0):
        from fluidnpu.hw.config import HwConfig
        cfg = HwConfig(**job["hw"])
        hw_json = json.dumps(job["hw"], sort_keys=True)
        metrics: dict = {}
        perf, serve = job.get("perf"), job.get("serve")
        mapping = job.get("mapping", "fluid")
        if perf is not None:
            tp = time.time()
            plan = _plan(hw_json, job["model"], mapping, max(perf["batches"]))
            metrics.update(_perf_metrics(plan, cfg, perf["batches"]))
            metrics["perf_s"] = round(time.time() - tp, 3)
        if serve is not None:
            from fluidnpu.sim.serving import run
            ts = time.time()
            sc_job = job["scenario"]
            sc = _build_scenario(sc_job["raw"], job.get("model"), sc_job["base"], sc_job["name"])
            tables = {m.name: _plan(hw_json, _model_ref_of(m, job), mapping, serve["b_max"]).latency_table()
                      for m in sc.models}
            if serve["slo_reference"] == "base":
                base_json = json.dumps(job["base_hw"], sort_keys=True)
                ref = {m.name: _plan(base_json, _model_ref_of(m, job), "rbatch", serve["b_max"]).latency_table()
                       for m in sc.models}
            else:
                ref = None
            name, knobs = job["scheduler"]
            res = run(sc, (name, knobs), tables, seed=job.get("seed", 0), slo_reference=ref)
            s = res.summary()
            metrics.update({
                "requests": s["requests"], "served": s["served"], "dropped": s["dropped"],
                "mean_ms": s["mean_ms"], "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"], "p99_ms": s["p99_ms"],
                "slo_attainment": s["slo_attainment"], "throughput_rps": s["throughput_rps"],
                "npu_util": s["utilisation"], "mac_util": s["mac_utilisation"],
                "mean_batch": s["mean_batch_size"], "preemptions": s["preemptions"],
            })
            for m, v in s["slo_attainment_at"].items():
                metrics[f"slo_at_{m:g}x"] = v
            metrics["serve_s"] = round(time.time() - ts, 3)
        rec["metrics"] = metrics
    return rec


def _model_ref_of(model, job) -> str:
    """The reference to load ``model`` by: the point's model if it is that one, else the
    file it was loaded from (a scenario's model TOML), else its zoo name."""
    ref = job.get("model")
    if ref is not None and _model(ref).name == model.name:
        return ref
    return (model.meta or {}).get("path") or model.name
