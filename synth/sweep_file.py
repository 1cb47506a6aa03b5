"""Sweep files: read and check a sweep (TOML, docs/sweeps.md) and build its points.

Every point is built and checked before anything runs; a bad value is a
:class:`SweepError` naming its field, the value and what is allowed. Running the points
is :mod:`fluidnpu.synth.sweep`; the work of one task is :mod:`fluidnpu.synth.sweep_tasks`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from fluidnpu.textfiles import TextFileError, read_text

from .choices import FLOORPLANS, PLACERS, ROUTERS

__all__ = ["SweepError", "Sweep", "Point", "load_sweep", "sweep_from_dict", "AXES"]


class SweepError(ValueError):
    """A sweep file breaks a rule; the message names the field, the value and what is allowed."""


#: axes that are not hardware fields
AXES = ("model", "scenario", "scheduler", "mapping", "seed")
_TOP = {"name", "base", "grid", "hw", "synth", "perf", "serve", "scenario", "plot", "seed", "description"}
_SYNTH_KEYS = {"target", "pack_only", "seed", "seeds", "target_mhz", "timeout_s", "max_parallel",
               "bitstream", "placer", "router", "floorplan"}




#: synth settings an [[hw]] row may give for its own synthesis (over [synth]'s): nextpnr's
#: placer and router (a large configuration may need router1, docs/synthesis.md)
_ROW_SYNTH = {"placer": PLACERS, "router": ROUTERS}
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
        d = tomllib.loads(read_text(p))
    except FileNotFoundError:
        raise SweepError(f"{p}: no such file") from None
    except OSError as e:
        raise SweepError(f"{p}: cannot read ({e.strerror})") from None
    except TextFileError as e:
        raise SweepError(str(e)) from None
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


def _one_of(where, name, v, allowed) -> None:
    if v not in allowed:
        raise SweepError(f"{where}: {name} = {v!r}: must be one of {', '.join(allowed)}")


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
    return scenario_from_dict(d, models=_model, base=base_dir, where=f"scenario {name!r}")


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
        _check_keys(w, e, set(hwf) | {"label", *_ROW_SYNTH}, "[[hw]]")
        clash = sorted(set(e) & set(axes))
        if clash:
            raise SweepError(f"{w}: {', '.join(clash)} is set both here and in [grid]: give it in one place")
        label = e.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise SweepError(f"{w}: label = {label!r}: must be a non-empty string")
        row_synth = {}                   # this row's nextpnr placer / router, over synth.*
        for k, choices in _ROW_SYNTH.items():
            if k in e:
                _one_of(w, k, e[k], choices)
                if "synth" not in d:
                    raise SweepError(f"{w}: {k} = {e[k]!r}: a row's {k} needs a [synth] section")
                row_synth[k] = e[k]
        hw_list.append((label, row_synth,
                        {k: v for k, v in e.items() if k != "label" and k not in _ROW_SYNTH}))

    # sections
    synth = None
    if "synth" in d:
        s = _check_keys(where, d["synth"], _SYNTH_KEYS, "[synth]")
        target = s.get("target", "ulx3s-85f")
        _one_of(where, "synth.target", target, TARGETS)
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
        for k, choices in _ROW_SYNTH.items():
            if k in s:          # (only then a key, as for seeds)
                _one_of(where, f"synth.{k}", s[k], choices)
                synth[k] = s[k]
        if "floorplan" in s:    # (only then a key)
            _one_of(where, "synth.floorplan", s["floorplan"], FLOORPLANS)
            synth["floorplan"] = s["floorplan"]
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
                scen_raw[s] = (tomllib.loads(read_text(q)), str(q.parent.resolve()))
            except (OSError, TextFileError) as e:
                raise SweepError(f"{where}: scenario file {q}: {getattr(e, 'strerror', None) or e}") from None
            except tomllib.TOMLDecodeError as e:
                raise SweepError(f"{where}: scenario file {q}: not valid TOML ({e})") from None
    for m in axes.get("mapping", []):
        _one_of(where, "grid.mapping", m, HARDWARE)
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
    for (label, row_own, hw_fixed), hw_vals in itertools.product(hw_list, itertools.product(*(axes[k] for k in hw_axes))):
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
            # a row's own placer / router (only then a key, as for synth.placer)
            row_synth = {**synth, **row_own} if row_own else synth
            sjob = {"kind": "synth", "hw": hw, "synth": row_synth, "label": hw_label}
            sid = "s" + _digest({"cfg": cfg.key(), "synth": row_synth})
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
