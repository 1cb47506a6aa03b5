"""Design-space sweeps: hardware x models x scenarios x schedulers, on one machine or Dask.

A sweep file (TOML, see docs/sweeps.md) names axes whose cartesian product gives the
points, and what to run per point:

* ``[synth]``: the synthesis flow (:func:`fluidnpu.synth.synthesize`) once per hardware
  configuration: LUTs, FFs, DSPs, BRAMs, Fmax, fit;
* ``[perf]``: the policy mapper on the cycle model (:func:`fluidnpu.sched.mapper.map_model`)
  per point: cycles, MAC utilisation and latency of the whole network at some batch sizes;
* ``[serve]``: the serving simulator (:func:`fluidnpu.sim.serving.run`) per point: mean
  and tail latency, SLO attainment, throughput.

:func:`load_sweep` reads and validates a file (every point is built and checked before
anything runs; a bad value is named with its field and what is allowed);
:func:`run_sweep` runs what is not done yet on a local process pool or an existing Dask
cluster and appends one JSON line per finished task to ``results.jsonl`` (flushed and
fsynced), so a sweep that crashed or was stopped resumes where it was. The table
(``results.csv``, and ``results.parquet`` with pyarrow) and the Pareto plots are
rebuilt from that file (:mod:`fluidnpu.synth.sweep_out`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import time
import tomllib
import traceback
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

__all__ = ["SweepError", "Sweep", "Point", "load_sweep", "sweep_from_dict", "run_sweep", "SweepRun",
           "evaluate_synth", "evaluate_point", "AXES"]


class SweepError(ValueError):
    """A sweep file breaks a rule; the message names the field, the value and what is allowed."""


#: axes that are not hardware fields
AXES = ("model", "scenario", "scheduler", "mapping", "seed")
_TOP = {"name", "base", "grid", "hw", "synth", "perf", "serve", "scenario", "plot", "seed", "description"}
_SYNTH_KEYS = {"target", "pack_only", "seed", "seeds", "target_mhz", "timeout_s", "max_parallel",
               "bitstream"}
_PERF_KEYS = {"batches"}
_SERVE_KEYS = {"b_max", "slo_reference"}
_PLOT_KEYS = {"x", "y"}


def _hw_fields() -> dict:
    from fluidnpu.hw.config import HwConfig
    return {f.name: f for f in fields(HwConfig)}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Point:
    """One point of a sweep: its parameters (the table's columns) and its task description."""
    index: int
    id: str
    params: dict            #: label, hardware fields, model, mapping, scenario, scheduler, seed
    hw: dict                #: HwConfig fields
    synth_id: str | None    #: the synthesis task this point's resources come from
    job: dict               #: everything a worker needs (plain data, picklable)


@dataclass
class Sweep:
    name: str
    path: Path | None
    points: list[Point]
    synth: dict | None                      #: synthesis options, or None
    synth_jobs: dict[str, dict] = field(default_factory=dict)   #: synth id -> job
    perf: dict | None = None
    serve: dict | None = None
    plot: dict = field(default_factory=dict)
    varying: list[str] = field(default_factory=list)   #: parameters that take more than one value

    @property
    def n_tasks(self) -> int:
        return len(self.points) + len(self.synth_jobs)


# -- reading and validating ----------------------------------------------------------

def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every point is built and checked."""
    p = Path(path)
    try:
        d = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise SweepError(f"{p}: no such file") from None
    except OSError as e:
        raise SweepError(f"{p}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{p}: not valid TOML ({e})") from None
    return sweep_from_dict(d, base_dir=p.parent, where=str(p), default_name=p.stem, path=p)


def _as_list(where: str, name: str, v) -> list:
    if isinstance(v, list):
        if not v:
            raise SweepError(f"{where}: {name} = []: give at least one value")
        return v
    return [v]


def _check_keys(where: str, d, allowed: set, what: str) -> dict:
    if not isinstance(d, dict):
        raise SweepError(f"{where}: {what} = {d!r}: must be a table")
    extra = sorted(set(d) - allowed)
    if extra:
        raise SweepError(f"{where}: unknown field(s) {', '.join(extra)} in {what}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    return d


def _bool(where, name, v):
    if not isinstance(v, bool):
        raise SweepError(f"{where}: {name} = {v!r}: must be true or false")
    return v


def _pos_num(where, name, v, integer=False):
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0 and (not integer or isinstance(v, int))
    if not ok:
        raise SweepError(f"{where}: {name} = {v!r}: must be a positive {'integer' if integer else 'number'}")
    return v


def _scheduler_spec(where: str, v) -> tuple[str, dict, str]:
    """(name, knobs, label) of a scheduler axis value; knobs are checked by building it."""
    from fluidnpu.sched import SchedulerError, make, names
    if isinstance(v, str):
        name, knobs = v, {}
    elif isinstance(v, dict):
        knobs = dict(v)
        name = knobs.pop("name", None)
        if not isinstance(name, str):
            raise SweepError(f"{where}: grid.scheduler entry {v!r}: needs name = one of {', '.join(names())}")
    else:
        raise SweepError(f"{where}: grid.scheduler entry {v!r}: must be a name ({', '.join(names())}) "
                         f"or a table {{ name = ..., knob = value }}")
    try:
        make(name, **knobs)
    except SchedulerError as e:
        raise SweepError(f"{where}: grid.scheduler: {e}") from None
    except TypeError as e:
        raise SweepError(f"{where}: grid.scheduler {name!r}: {e}") from None
    label = name if not knobs else name + "(" + ",".join(f"{k}={knobs[k]}" for k in sorted(knobs)) + ")"
    return name, knobs, label


def _resolve_model_ref(where: str, ref, base_dir: Path) -> str:
    """A zoo name as is, a model file as an absolute path; checked by loading it."""
    from fluidnpu.sim.workloads import zoo
    if not isinstance(ref, str) or not ref:
        raise SweepError(f"{where}: grid.model entry {ref!r}: must be a zoo name ({', '.join(zoo.names())}) "
                         f"or a model TOML path")
    if ref in zoo.names():
        resolved = ref
    else:
        q = Path(ref)
        q = q if q.is_absolute() else (base_dir / q)
        resolved = str(q.resolve()) if q.is_file() else ref
    try:
        _model(resolved)
    except Exception as e:  # WorkloadError and friends: name the entry
        raise SweepError(f"{where}: grid.model = {ref!r}: {e}") from None
    return resolved


@lru_cache(maxsize=64)
def _model(ref: str):
    from fluidnpu.sim.workloads import zoo
    return zoo.resolve_model(ref)


def _scenario_dict(raw: dict, model_ref: str | None) -> dict:
    """The scenario table with the point's model filled in where a device names none."""
    d = json.loads(json.dumps(raw))
    for dev in d.get("device", []) or []:
        if isinstance(dev, dict) and "model" not in dev and model_ref is not None:
            dev["model"] = model_ref
    return d


def _build_scenario(raw: dict, model_ref: str | None, base_dir: str, name: str):
    from fluidnpu.sim.serving import scenario_from_dict
    d = _scenario_dict(raw, model_ref)
    d.setdefault("name", name)
    return scenario_from_dict(d, models=lambda m: _model(_in_dir(m, base_dir)), base=base_dir,
                              where=f"scenario {name!r}")


def _in_dir(ref, base_dir) -> str:
    """A scenario's model TOML path relative to the scenario's folder (as load_scenario
    reads it); zoo names and absolute paths as they are."""
    if isinstance(ref, str) and Path(ref).suffix.lower() == ".toml" and not Path(ref).is_absolute():
        return str((Path(base_dir) / ref).resolve())
    return ref


def sweep_from_dict(d: dict, *, base_dir: str | Path = ".", where: str = "sweep",
                    default_name: str = "sweep", path: Path | None = None) -> Sweep:
    """Build and validate a :class:`Sweep` from a parsed sweep file."""
    from fluidnpu.hw.config import ConfigError, HwConfig, load_hw_config
    from fluidnpu.sched.mapper import HARDWARE
    from fluidnpu.sim.serving import ScenarioError
    from fluidnpu.synth.targets import TARGETS

    base_dir = Path(base_dir)
    _check_keys(where, d, _TOP, "the sweep file")
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SweepError(f"{where}: name = {name!r}: must be a non-empty string")
    hwf = _hw_fields()

    # base configuration
    base = HwConfig()
    if "base" in d:
        b = d["base"]
        if isinstance(b, str):
            q = Path(b) if Path(b).is_absolute() else base_dir / b
            try:
                base = load_hw_config(q)
            except ConfigError as e:
                raise SweepError(f"{where}: base = {b!r}: {e}") from None
        elif isinstance(b, dict):
            try:
                base = HwConfig.from_dict(b, f"{where}: base")
            except (ConfigError, TypeError) as e:
                raise SweepError(f"{where}: base: {e}") from None
        else:
            raise SweepError(f"{where}: base = {b!r}: must be a hardware config TOML path or a table of "
                             f"HwConfig fields")

    # axes
    grid = _check_keys(where, d.get("grid", {}), set(hwf) | set(AXES), "[grid]")
    axes: dict[str, list] = {k: _as_list(where, f"grid.{k}", v) for k, v in grid.items()}
    if "seed" in d:
        if "seed" in axes:
            raise SweepError(f"{where}: seed is given both at the top and in [grid]: give it once")
        axes["seed"] = _as_list(where, "seed", d["seed"])
    for s in axes.get("seed", []):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SweepError(f"{where}: seed = {s!r}: must be a non-negative integer")

    # explicit hardware configurations
    hw_entries = d.get("hw", [{}])
    if isinstance(hw_entries, dict):
        hw_entries = [hw_entries]
    if not isinstance(hw_entries, list) or not hw_entries:
        raise SweepError(f"{where}: hw = {hw_entries!r}: must be [[hw]] tables of HwConfig fields")
    hw_list = []
    for i, e in enumerate(hw_entries):
        w = f"{where}: hw[{i}]"
        _check_keys(w, e, set(hwf) | {"label"}, "[[hw]]")
        clash = sorted(set(e) & set(axes))
        if clash:
            raise SweepError(f"{w}: {', '.join(clash)} is set both here and in [grid]: give it in one place")
        label = e.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise SweepError(f"{w}: label = {label!r}: must be a non-empty string")
        hw_list.append((label, {k: v for k, v in e.items() if k != "label"}))

    # sections
    synth = None
    if "synth" in d:
        s = _check_keys(where, d["synth"], _SYNTH_KEYS, "[synth]")
        target = s.get("target", "ulx3s-85f")
        if target not in TARGETS:
            raise SweepError(f"{where}: synth.target = {target!r}: must be one of {', '.join(TARGETS)}")
        synth = {"target": target, "pack_only": _bool(where, "synth.pack_only", s.get("pack_only", False)),
                 "bitstream": _bool(where, "synth.bitstream", s.get("bitstream", True)),
                 "seed": s.get("seed", 1), "target_mhz": s.get("target_mhz"),
                 "timeout_s": s.get("timeout_s"), "max_parallel": s.get("max_parallel", 1)}
        if isinstance(synth["seed"], bool) or not isinstance(synth["seed"], int):
            raise SweepError(f"{where}: synth.seed = {synth['seed']!r}: must be an integer")
        if "seeds" in s:        # (only then a key: job ids of seed-less sweeps stay as they were)
            if "seed" in s:
                raise SweepError(f"{where}: synth.seed and synth.seeds are both given: give one")
            from .flow import seed_list
            raw = s["seeds"]
            try:
                seeds = seed_list(raw)
            except ValueError as e:
                raise SweepError(f"{where}: synth.{e}") from None
            if synth["pack_only"]:
                raise SweepError(f"{where}: synth.seeds = {raw!r}: pack_only stops before "
                                 "placement; a seed sweep needs place and route")
            synth["seeds"], synth["seed"] = list(seeds), seeds[0]
        for k in ("target_mhz", "timeout_s"):
            if synth[k] is not None:
                _pos_num(where, f"synth.{k}", synth[k])
        _pos_num(where, "synth.max_parallel", synth["max_parallel"], integer=True)
    perf = None
    if "perf" in d:
        s = _check_keys(where, d["perf"], _PERF_KEYS, "[perf]")
        batches = _as_list(where, "perf.batches", s.get("batches", [1]))
        for b in batches:
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 255:
                raise SweepError(f"{where}: perf.batches entry {b!r}: must be an integer from 1 to 255")
        perf = {"batches": sorted(set(batches))}
    serve = None
    if "serve" in d:
        s = _check_keys(where, d["serve"], _SERVE_KEYS, "[serve]")
        b_max = s.get("b_max", 16)
        if isinstance(b_max, bool) or not isinstance(b_max, int) or not 1 <= b_max <= 255:
            raise SweepError(f"{where}: serve.b_max = {b_max!r}: must be an integer from 1 to 255")
        ref = s.get("slo_reference", "base")
        if ref not in ("base", "point"):
            raise SweepError(f"{where}: serve.slo_reference = {ref!r}: must be 'base' (the base configuration, "
                             f"rbatch mapping: the same deadlines for every point) or 'point'")
        serve = {"b_max": b_max, "slo_reference": ref}
    plot = _check_keys(where, d.get("plot", {}), _PLOT_KEYS, "[plot]")
    plot = {"x": _as_list(where, "plot.x", plot.get("x", ["luts", "dsps"])),
            "y": _as_list(where, "plot.y", plot.get("y", ["p99_ms", "slo_attainment"]))}
    for k in ("x", "y"):
        for v in plot[k]:
            if not isinstance(v, str):
                raise SweepError(f"{where}: plot.{k} entry {v!r}: must be a column name")
    if synth is None and perf is None and serve is None:
        raise SweepError(f"{where}: nothing to run: add [synth], [perf] and/or [serve]")

    # scenarios
    scen_tables = d.get("scenario", {})
    _check_keys(where, scen_tables, set(scen_tables) if isinstance(scen_tables, dict) else set(), "[scenario]")
    if serve is not None:
        if "scenario" not in axes:
            if len(scen_tables) == 1:
                axes["scenario"] = list(scen_tables)
            else:
                raise SweepError(f"{where}: [serve] needs grid.scenario = [...] (names of [scenario.NAME] "
                                 f"tables: {', '.join(scen_tables) or 'none defined'}, or scenario TOML paths)")
        if "scheduler" not in axes:
            raise SweepError(f"{where}: [serve] needs grid.scheduler = [...]")
    else:
        for k in ("scenario", "scheduler"):
            if k in axes:
                raise SweepError(f"{where}: grid.{k} is set but there is no [serve] section to use it")
    if perf is not None and "model" not in axes:
        raise SweepError(f"{where}: [perf] needs grid.model = [...] (zoo names or model TOML paths)")

    # check axis values
    scen_raw: dict[str, tuple[dict, str]] = {}
    for s in axes.get("scenario", []):
        if not isinstance(s, str):
            raise SweepError(f"{where}: grid.scenario entry {s!r}: must be a [scenario.NAME] name or a TOML path")
        if s in scen_tables:
            if not isinstance(scen_tables[s], dict):
                raise SweepError(f"{where}: scenario.{s}: must be a table")
            scen_raw[s] = (scen_tables[s], str(base_dir.resolve()))
        else:
            q = Path(s) if Path(s).is_absolute() else base_dir / s
            if not q.is_file():
                raise SweepError(f"{where}: grid.scenario = {s!r}: neither a [scenario.NAME] table "
                                 f"({', '.join(scen_tables) or 'none defined'}) nor a scenario file")
            try:
                scen_raw[s] = (tomllib.loads(q.read_text()), str(q.parent.resolve()))
            except tomllib.TOMLDecodeError as e:
                raise SweepError(f"{where}: scenario file {q}: not valid TOML ({e})") from None
    for m in axes.get("mapping", []):
        if m not in HARDWARE:
            raise SweepError(f"{where}: grid.mapping = {m!r}: must be one of {', '.join(HARDWARE)}")
    models = [_resolve_model_ref(where, m, base_dir) for m in axes.get("model", [])]
    if models:
        axes["model"] = models
    scheds = [_scheduler_spec(where, v) for v in axes.get("scheduler", [])]
    if scheds:
        axes["scheduler"] = scheds
    if serve is not None or perf is not None:
        axes.setdefault("mapping", ["fluid"])
    if serve is not None:
        axes.setdefault("seed", [0])

    # the points
    hw_axes = [k for k in axes if k in hwf]
    other_axes = [k for k in AXES if k in axes]
    points: list[Point] = []
    synth_jobs: dict[str, dict] = {}
    cfgs: dict[str, Any] = {}
    checked_scen: set = set()
    opts = {"synth": synth, "perf": perf, "serve": serve}
    for (label, hw_fixed), hw_vals in itertools.product(hw_list, itertools.product(*(axes[k] for k in hw_axes))):
        hw_over = dict(hw_fixed)
        hw_over.update(zip(hw_axes, hw_vals))
        try:
            cfg = base.replace(**hw_over)
        except ConfigError as e:
            raise SweepError(f"{where}: hardware point {_fmt_over(hw_over)}: {e}") from None
        except TypeError as e:
            raise SweepError(f"{where}: hardware point {_fmt_over(hw_over)}: {e}") from None
        hw = cfg.to_dict()
        axis_part = _fmt_over(dict(zip(hw_axes, hw_vals)))
        hw_label = (f"{label} {axis_part}" if axis_part else label) if label else (_fmt_over(hw_over) or "base")
        sid = None
        if synth is not None:
            sjob = {"kind": "synth", "hw": hw, "synth": synth, "label": hw_label}
            sid = "s" + _digest({"cfg": cfg.key(), "synth": synth})
            sjob["id"] = sid
            synth_jobs.setdefault(sid, sjob)
        for vals in itertools.product(*(axes[k] for k in other_axes)):
            ax = dict(zip(other_axes, vals))
            params = {"label": hw_label, **hw, "lanes": cfg.lanes}
            job: dict = {"kind": "point", "hw": hw, "perf": perf, "serve": serve, "base_hw": base.to_dict()}
            if "model" in ax:
                params["model"] = _model(ax["model"]).name
                job["model"] = ax["model"]
            if "mapping" in ax:
                params["mapping"] = ax["mapping"]
                job["mapping"] = ax["mapping"]
            if "scenario" in ax:
                params["scenario"] = ax["scenario"]
                raw, sbase = scen_raw[ax["scenario"]]
                job["scenario"] = {"name": ax["scenario"], "raw": raw, "base": sbase}
                key = (ax["scenario"], ax.get("model"))
                if key not in checked_scen:
                    try:
                        _build_scenario(raw, ax.get("model"), sbase, ax["scenario"])
                    except ScenarioError as e:
                        raise SweepError(f"{where}: grid.scenario = {ax['scenario']!r}"
                                         f"{'' if ax.get('model') is None else ' with model ' + repr(ax['model'])}"
                                         f": {e}") from None
                    checked_scen.add(key)
            if "scheduler" in ax:
                sname, knobs, slabel = ax["scheduler"]
                params["scheduler"] = slabel
                job["scheduler"] = [sname, knobs]
            if "seed" in ax:
                params["seed"] = ax["seed"]
                job["seed"] = ax["seed"]
            pid = "p" + _digest({"params": params, "job": {k: v for k, v in job.items() if k != "kind"},
                                 "opts": {k: opts[k] for k in ("perf", "serve")}})
            job["id"] = pid
            job["params"] = params
            points.append(Point(index=len(points), id=pid, params=params, hw=hw, synth_id=sid, job=job))
            cfgs[cfg.key()] = cfg
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        first = next(p for p in points if p.id == dup)
        raise SweepError(f"{where}: point {first.params} appears twice (the same configuration is listed "
                         f"twice in [[hw]] or [grid])")
    # parameters that take more than one value (the interesting columns)
    varying = [k for k in points[0].params if len({json.dumps(p.params.get(k), default=str) for p in points}) > 1] \
        if points else []
    return Sweep(name=name, path=path, points=points, synth=synth, synth_jobs=synth_jobs, perf=perf,
                 serve=serve, plot=plot, varying=varying)


def _fmt_over(over: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in over.items())


# -- the work of one task (runs in a worker process) ---------------------------------

def evaluate_synth(job: dict, out_root: str | None = None) -> dict:
    """Synthesise one hardware configuration; returns a record (never raises)."""
    t0 = time.time()
    rec = {"kind": "synth", "id": job["id"], "label": job["label"], "host": socket.gethostname(),
           "pid": os.getpid(), "started": t0}
    try:
        from fluidnpu.hw.config import HwConfig
        from fluidnpu.synth.flow import synthesize
        cfg = HwConfig(**job["hw"])
        s = job["synth"]
        out_dir = Path(out_root) / "synth" / job["id"] if out_root else None
        r = synthesize(cfg, s["target"], out_dir, seed=s["seed"], seeds=s.get("seeds"),
                       target_mhz=s["target_mhz"],
                       pack_only=s["pack_only"], bitstream=s["bitstream"], timeout=s["timeout_s"])
        rec["metrics"] = {
            "target": r.target, "luts": r.luts, "ffs": r.ffs, "dsps": r.dsps, "brams": r.brams,
            "lut_util": r.util.get("luts"), "ff_util": r.util.get("ffs"), "dsp_util": r.util.get("dsps"),
            "bram_util": r.util.get("brams"), "fmax_mhz": r.fmax_mhz, "target_mhz": r.target_mhz,
            "timing_met": r.timing_met, "fits": r.fits, "fit_reason": r.reason,
            "synth_seed": r.seed, "routed": r.routed, "fmax_placed_mhz": r.fmax_placed_mhz,
            "seed_fmax": "; ".join(f"{k}: {v}" for k, v in r.seed_fmax.items()),
            "synth_s": r.elapsed_s, "synth_cached": r.cached, "synth_dir": r.out_dir,
            "tools": "; ".join(f"{k} {v}" for k, v in r.tool_versions.items()),
        }
        rec["ok"] = True
    except BaseException as e:  # noqa: BLE001 - a record of the failure, not a crash of the sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        _record_failure(rec, e)
    rec["elapsed_s"] = round(time.time() - t0, 3)
    return rec


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
    try:
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
        rec["ok"] = True
    except BaseException as e:  # noqa: BLE001 - a record of the failure, not a crash of the sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        _record_failure(rec, e)
    rec["elapsed_s"] = round(time.time() - t0, 3)
    return rec


def _model_ref_of(model, job) -> str:
    """The reference to load ``model`` by: the point's model if it is that one, else its name (zoo)."""
    ref = job.get("model")
    if ref is not None and _model(ref).name == model.name:
        return ref
    return model.name


# -- running ---------------------------------------------------------------------------

class _Inline:
    """Runs each task when submitted (``--workers 1``): no pool, the same bookkeeping."""

    def submit(self, fn, *args):
        from concurrent.futures import Future
        f = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            f.set_exception(e)
        return f

    def wait(self, futures):
        return set(futures), set()

    def close(self, cancel=False, futures=()):
        pass

    capacity = 1


class _Pool:
    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        self.capacity = 2 * workers

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def wait(self, futures):
        from concurrent.futures import FIRST_COMPLETED, wait
        done, rest = wait(futures, return_when=FIRST_COMPLETED)
        return done, rest

    def close(self, cancel=False, futures=()):
        if cancel:
            # stop what runs now too: the workers and the tools they started (yosys, nextpnr)
            workers = list(getattr(self.ex, "_processes", {}) or {})
            _terminate_tree(workers)
        try:
            self.ex.shutdown(wait=not cancel, cancel_futures=cancel)
        except Exception:  # noqa: BLE001 - a broken pool on the way out
            pass


def _terminate_tree(pids, grace_s: float = 3.0) -> None:
    """Terminate the processes ``pids`` (the pool's workers) and their children (after Ctrl-C)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += p.children(recursive=True) + [p]
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


class _Dask:
    def __init__(self, address):
        try:
            from distributed import Client
        except ImportError:
            raise SweepError("--dask: the 'distributed' package is not installed "
                             "(pip install 'dask[distributed]')") from None
        if isinstance(address, Client):
            self.client, self.own = address, False
        else:
            try:
                self.client, self.own = Client(address, timeout=30), True
            except (OSError, TimeoutError) as e:
                raise SweepError(f"--dask {address}: cannot connect to a Dask scheduler ({e})") from None
        threads = sum(self.client.nthreads().values()) or 1
        self.capacity = 2 * threads
        self.workers = threads

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait(self, futures):
        from distributed import wait
        res = wait(list(futures), return_when="FIRST_COMPLETED")
        return set(res.done), set(res.not_done)

    def close(self, cancel=False, futures=()):
        if cancel and futures:
            try:
                self.client.cancel(futures)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if self.own:
            self.client.close()


@dataclass
class SweepRun:
    """What :func:`run_sweep` did."""
    out_dir: Path
    total: int                  #: points in the sweep
    done: int                   #: points with a finished record (now)
    skipped: int                #: tasks already done before this run
    ran: int                    #: tasks run now
    failed: list[dict]          #: records of tasks that failed now
    interrupted: bool
    table: Path | None
    plots: list[Path]
    elapsed_s: float

    @property
    def complete(self) -> bool:
        return self.done == self.total and not self.failed


def run_sweep(sweep: Sweep, out_dir: str | Path, *, workers: int | None = None, dask=None,
              progress: bool = True, plots: bool = True,
              log: Callable[[str], None] | None = None) -> SweepRun:
    """Run the tasks of ``sweep`` not yet recorded in ``out_dir/results.jsonl``.

    ``workers``: local processes (default: CPU count; 1 runs in this process); ``dask``:
    a scheduler address (``tcp://host:port``) or a ``distributed.Client``. Finished tasks
    are appended to ``results.jsonl`` one line each (flushed and fsynced); the table and
    plots are rebuilt at the end, also after Ctrl-C (which stops the sweep: rerun to go on).
    """
    from .sweep_out import ResultStore, write_outputs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    store = ResultStore(out / "results.jsonl")
    done_ids = store.done_ids()
    (out / "sweep.json").write_text(json.dumps({"name": sweep.name, "file": str(sweep.path) if sweep.path else None,
                                                "points": len(sweep.points), "synth": sweep.synth,
                                                "perf": sweep.perf, "serve": sweep.serve}, indent=2) + "\n")
    # each configuration's synthesis, then its points: rows appear as soon as they can
    todo: list[tuple[str, dict]] = []
    by_synth: dict = {}
    for p in sweep.points:
        by_synth.setdefault(p.synth_id, []).append(p)
    for sid, job in sweep.synth_jobs.items():
        if sid not in done_ids:
            todo.append(("synth", job))
        todo += [("point", p.job) for p in by_synth.get(sid, []) if p.id not in done_ids]
    todo += [("point", p.job) for p in by_synth.get(None, []) if p.id not in done_ids]
    skipped = sweep.n_tasks - len(todo)
    if workers is None:
        workers = os.cpu_count() or 1
    if dask is not None:
        runner = _Dask(dask)
        where = f"Dask cluster {getattr(runner.client, 'scheduler', None) and runner.client.scheduler.address} " \
                f"({runner.workers} threads)"
    elif workers <= 1 or len(todo) <= 1:
        runner, where = _Inline(), "this process"
    else:
        runner, where = _Pool(workers), f"{workers} local processes"
    say(f"sweep {sweep.name}: {len(sweep.points)} points, {len(sweep.synth_jobs)} synthesis runs; "
        f"{skipped} of {sweep.n_tasks} tasks already done; running {len(todo)} on {where}; results in {out}")
    max_synth = (sweep.synth or {}).get("max_parallel", 1)
    failed: list[dict] = []
    ran = 0
    interrupted = False
    t0 = time.time()
    bar = _Bar(len(todo), sweep.name, progress, say)
    inflight: dict = {}
    queue = list(todo)
    out_root = str(out.resolve())
    old_term = _on_sigterm_interrupt()
    try:
        with bar:
            while queue or inflight:
                n_synth = sum(1 for k, _ in inflight.values() if k == "synth")
                while queue and len(inflight) < runner.capacity:
                    i = 0
                    if queue[0][0] == "synth" and n_synth >= max_synth:
                        i = next((j for j, (k, _) in enumerate(queue) if k != "synth"), None)
                        if i is None:
                            break
                    kind, job = queue.pop(i)
                    fut = (runner.submit(evaluate_synth, job, out_root) if kind == "synth"
                           else runner.submit(evaluate_point, job))
                    inflight[fut] = (kind, job)
                    n_synth += kind == "synth"
                done, _ = runner.wait(list(inflight))
                for fut in done:
                    kind, job = inflight.pop(fut)
                    try:
                        rec = fut.result()
                    except Exception as e:  # noqa: BLE001 - the worker died, the pool broke, ...
                        rec = {"kind": kind, "id": job["id"], "ok": False, "error": f"{type(e).__name__}: {e}"}
                        if kind == "point":
                            rec["params"] = job["params"]
                    ran += 1
                    if rec.get("ok"):
                        store.append(rec)
                    else:
                        failed.append(rec)
                        store.append_error(rec)
                    bar.advance(_describe(rec))
    except KeyboardInterrupt:
        interrupted = True
        runner.close(cancel=True, futures=list(inflight))
        say(f"interrupted: {ran} tasks finished in this run are saved; run the same command again to go on")
    else:
        runner.close()
    finally:
        _restore_sigterm(old_term)
    table, plot_files, n_done = write_outputs(sweep, out, plots=plots, log=say)
    return SweepRun(out_dir=out, total=len(sweep.points), done=n_done, skipped=skipped, ran=ran, failed=failed,
                    interrupted=interrupted, table=table, plots=plot_files, elapsed_s=round(time.time() - t0, 2))


def _on_sigterm_interrupt():
    """SIGTERM (a batch system's stop, ``kill``) stops the sweep as Ctrl-C does: saved, resumable."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(old) -> None:
    import signal
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def _describe(rec: dict) -> str:
    if rec.get("kind") == "synth":
        what = f"synth {rec.get('label', rec['id'])}"
        m = rec.get("metrics", {})
        if rec.get("ok"):
            fm, fp = m.get("fmax_mhz"), m.get("fmax_placed_mhz")
            what += (f": LUTs {m.get('luts')}, DSPs {m.get('dsps')}, BRAMs {m.get('brams')}"
                     + (f", Fmax {fm:.1f} MHz" if fm else
                        f", not routed ({fp:.1f} MHz after placement)" if fp else "")
                     + (" (cached)" if m.get("synth_cached") else ""))
    else:
        p = rec.get("params", {})
        what = "point " + " ".join(str(p[k]) for k in ("label", "model", "scenario", "scheduler") if k in p)
        m = rec.get("metrics", {})
        if rec.get("ok") and "p99_ms" in m:
            what += f": mean {m['mean_ms']:.3g} ms, p99 {m['p99_ms']:.3g} ms, SLO {m['slo_attainment']:.3f}"
    if not rec.get("ok"):
        what += f": FAILED {rec.get('error', '')}"
    return what + f" [{rec.get('elapsed_s', 0):.1f} s]"


class _Bar:
    """A rich progress bar with ETA on a terminal; one line per task otherwise."""

    def __init__(self, total: int, name: str, enabled: bool, say):
        self.total, self.enabled, self.say, self.n = total, enabled, say, 0
        self.t0 = time.monotonic()
        self.progress = None
        if enabled and total:
            import sys

            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            console = Console(file=sys.stderr)
            self.live = console.is_terminal
            self.progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=console, disable=not self.live)
            self.task = self.progress.add_task(name, total=total)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def advance(self, text: str):
        self.n += 1
        if self.progress is None:
            return
        if self.live:
            self.progress.advance(self.task)
            if "FAILED" in text:
                self.progress.console.print(text, markup=False, highlight=False)
        else:
            dt = time.monotonic() - self.t0
            eta = dt / self.n * (self.total - self.n)
            self.say(f"[{self.n}/{self.total} {dt:.0f} s, ETA {eta:.0f} s] {text}")
