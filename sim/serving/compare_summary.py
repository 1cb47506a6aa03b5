"""From a compare's runs to its figures: per-cell entries, best baselines, the two comparisons.

* **Entries.** Per cell, hardware and scheduler: the latency figures of the knobs tuned
  for mean latency, the tail figures of the knobs tuned for SLO attainment, each the
  mean over seeds with a t-interval, and the per-seed values the ratios are built from.
* **Best baselines** per cell and hardware, per class: *throughput* (fcfs, dynamic,
  clipper, lazy), *preemptive* (prema) and *best* (all five); for latency the lowest mean
  latency, for the tail the highest attainment (means over seeds).
* **Comparisons.** *system*: ``fluid`` on fluid hardware against each class's best on
  rbatch hardware. *scheduler_only*: ``fluid`` against each class's best on the *same*
  hardware, for rbatch and for fluid hardware (``by_hardware``) and both together.
  ``avg_latency_ratio``: per seed, the geometric mean over cells (and hardware) of the
  baseline's mean latency over fluid's; the point estimate is the geometric mean of the
  per-seed values and the interval is theirs (:func:`.stats.geo_ci`). ``tail_ratio``
  (the headline tail figure, rule in docs/serving.md): in the tail cell (the burstiest
  pattern at the highest load), per seed fluid's SLO attainment on the devices' own SLOs,
  the scored models weighted equally, over the baseline's. ``tail_p99_ratio``: there,
  the geometric mean over scored models of the baseline's p99 latency over fluid's.
  A model is *scored* when its SLO is attainable (the probe at low load); with none, the
  tail figures are ``None`` and the scenario is flagged ``tail_unattainable``.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .compare_spec import BASELINES, HARDWARE, PREEMPTIVE, SCHEDULERS, THROUGHPUT, CompareSpec
from .stats import geo_ci, mean_ci

__all__ = ["summarise", "CompareError", "CLASSES", "PAPER"]

CLASSES = {"vs_throughput": THROUGHPUT, "vs_preemptive": PREEMPTIVE, "vs_best": BASELINES}
PAPER = {"avg_latency_ratio": 1.97, "tail_ratio": 6.7}
_LAT_FIELDS = {"mean_ms": (0.0,), "p50_ms": (0.0,), "p95_ms": (0.0,), "p99_ms": (0.0,), "utilisation": (0.0, 1.0),
               "throughput_rps": (0.0,), "preemptions": (0.0,), "merges": (0.0,), "mean_batch_size": (0.0,),
               "dropped": (0.0,)}


class CompareError(RuntimeError):
    """The runs do not support a figure (e.g. a scheduler-only pair on different hardware)."""


def _entry(runs, p, l, name, hw, kl, ks, seeds, scored, models) -> dict:
    lat = [runs[(p, l, s, name, kl, hw)] for s in seeds]
    slo = [runs[(p, l, s, name, ks, hw)] for s in seeds]
    ran_on = {m["hardware"] for m in lat + slo}
    if ran_on != {hw}:
        raise CompareError(f"{name} in {p}@{l:g}: runs filed under hardware {hw!r} ran on {sorted(ran_on)}")
    e = {"hardware": hw, "knobs_latency": json.loads(kl), "knobs_slo": json.loads(ks)}
    for f, bounds in _LAT_FIELDS.items():
        m, lo, hi = mean_ci([r[f] for r in lat], *bounds)
        e[f] = m
        if f in ("mean_ms", "p99_ms"):
            e[f + "_ci95"] = [lo, hi]
    e["mean_ms_per_seed"] = [r["mean_ms"] for r in lat]
    att = [_mean([r["per_model"][k]["attainment"] for k in scored if k in r["per_model"]]) for r in slo]
    e["attainment"], lo, hi = mean_ci(att, 0.0, 1.0)
    e["attainment_ci95"], e["attainment_per_seed"] = [lo, hi], att
    m, lo, hi = mean_ci([r["attainment_req"] for r in slo], 0.0, 1.0)
    e["attainment_req"], e["attainment_req_ci95"] = m, [lo, hi]
    e["per_model"], e["p99_ms_by_model_per_seed"], sweep = {}, {}, {}
    for k in models:
        e["p99_ms_by_model_per_seed"][k] = [r["per_model"][k]["p99_ms"] if k in r["per_model"] else math.nan
                                            for r in slo]
        rows = [r["per_model"][k] for r in slo if k in r["per_model"]]
        if not rows:
            continue
        e["per_model"][k] = {"requests": int(np.mean([x["requests"] for x in rows])),
                             "p99_ms": mean_ci([x["p99_ms"] for x in rows], 0.0)[0],
                             "attainment": mean_ci([x["attainment"] for x in rows], 0.0, 1.0)[0],
                             "scored": k in scored}
        sweep[k] = np.mean([x["violation_at"] for x in rows], axis=0).tolist()
    e["violation_sweep_by_model"] = sweep
    e["violation_sweep"] = np.mean(list(sweep.values()), axis=0).tolist() if sweep else []
    return e


def _mean(xs) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def _best(entries: dict, names, key: str, lower: bool) -> str:
    def score(n):
        v = entries[n][key]
        return math.inf if v != v else (v if lower else -v)
    return min(names, key=score)


def _same_hw(a: dict, b: dict, what: str) -> None:
    if a["hardware"] != b["hardware"]:
        raise CompareError(f"{what}: a scheduler-only ratio needs both runs on the same hardware; got "
                           f"{a['hardware']!r} and {b['hardware']!r}")


def _lat_ratios(pairs, n_seeds) -> list[float]:
    """Per seed: the geometric mean over pairs of baseline mean latency / fluid mean latency."""
    out = []
    for s in range(n_seeds):
        logs = [math.log(b["mean_ms_per_seed"][s] / f["mean_ms_per_seed"][s]) for f, b in pairs]
        out.append(_exp_mean(logs))
    return out


def _exp_mean(logs) -> float:
    """exp of the mean of the finite logs (NaN if none): a geometric mean that skips missing terms."""
    x = [v for v in logs if math.isfinite(v)]
    return math.exp(sum(x) / len(x)) if x else math.nan


def _tail_ratios(pairs, n_seeds, scored) -> tuple[list[float], list[float]]:
    """Per seed: attainment ratio (fluid / baseline) and p99 ratio (baseline / fluid), geometric over pairs."""
    att, p99 = [], []
    for s in range(n_seeds):
        la, lp = [], []
        for f, b in pairs:
            fa, ba = f["attainment_per_seed"][s], b["attainment_per_seed"][s]
            la.append(math.log(fa / ba) if fa > 0 and ba > 0 else math.nan)
            for k in scored:
                bp, fp = b["p99_ms_by_model_per_seed"][k][s], f["p99_ms_by_model_per_seed"][k][s]
                lp.append(math.log(bp / fp) if bp > 0 and fp > 0 else math.nan)   # NaN: no request served
        att.append(_exp_mean(la))
        p99.append(_exp_mean(lp))
    return att, p99


def _figure(per_seed) -> tuple[float, list[float], list[float]]:
    g, lo, hi = geo_ci(per_seed)
    return g, [lo, hi], per_seed


def _put(d: dict, key: str, per_seed) -> None:
    if per_seed is None:
        d[key], d[key + "_ci95"], d[key + "_per_seed"] = None, None, None
        return
    d[key], d[key + "_ci95"], d[key + "_per_seed"] = _figure(per_seed)


def _cells(runs, chosen, spec, models, scored) -> list[dict]:
    """Per (pattern, load): entries per hardware and scheduler, and the best baselines per class."""
    tail_cell = (spec.tail_pattern, max(spec.loads))
    cells = []
    for p in spec.patterns:
        for l in spec.loads:
            hw_e = {hw: {name: _entry(runs, p, l, name, hw, *chosen[(p, l, name, hw)], spec.seeds, scored, models)
                         for name in SCHEDULERS} for hw in HARDWARE}
            best = {hw: {cls: {"latency": _best(hw_e[hw], names, "mean_ms", True),
                               "tail": _best(hw_e[hw], names, "attainment", False)}
                         for cls, names in CLASSES.items()} for hw in HARDWARE}
            cells.append({"pattern": p, "load": l, "hardware": hw_e, "best": best,
                          "schedulers": {name: hw_e["fluid" if name == "fluid" else "rbatch"][name]
                                         for name in SCHEDULERS},
                          "tail_cell": (p, l) == tail_cell})
    return cells


def _comparison(cells, tc, scored, n, fluid_hw, base_hws, same) -> dict:
    """Per class: fluid on ``fluid_hw`` (``same``: on each base hardware) against the class's best on ``base_hws``."""
    out = {}
    for cls in CLASSES:
        def pair(c, hw, figure, where):
            """Fluid's runs and the class's best baseline's (by ``figure``) in cell ``c``."""
            f = c["hardware"][hw if same else fluid_hw]["fluid"]
            b = c["hardware"][hw][c["best"][hw][cls][figure]]
            if same:
                _same_hw(f, b, f"{where}{c['pattern']}@{c['load']:g}")
            return f, b
        lat_pairs = [pair(c, hw, "latency", "") for c in cells for hw in base_hws]
        tail_pairs = [pair(tc, hw, "tail", "tail cell ") for hw in base_hws]
        d = {}
        _put(d, "avg_latency_ratio", _lat_ratios(lat_pairs, n))
        att, p99 = _tail_ratios(tail_pairs, n, scored) if scored else (None, None)
        _put(d, "tail_ratio", att)
        _put(d, "tail_p99_ratio", p99)
        d["baselines"] = {"latency": {f"{c['pattern']}@{c['load']:g}": {hw: c["best"][hw][cls]["latency"]
                                                                        for hw in base_hws} for c in cells},
                          "tail": {hw: tc["best"][hw][cls]["tail"] for hw in base_hws}}
        out[cls] = d
    return out


def _hardware_only(cells, tc, scored, n) -> dict:
    """The same scheduler (fluid; the best baseline on rbatch) on rbatch over on fluid hardware."""
    out = {}
    for who in ("fluid", "best_baseline"):
        lat_pairs = []
        for c in cells:
            name = "fluid" if who == "fluid" else c["best"]["rbatch"]["vs_best"]["latency"]
            lat_pairs.append((c["hardware"]["fluid"][name], c["hardware"]["rbatch"][name]))
        name = "fluid" if who == "fluid" else tc["best"]["rbatch"]["vs_best"]["tail"]
        tail_pairs = [(tc["hardware"]["fluid"][name], tc["hardware"]["rbatch"][name])]
        d = {}
        _put(d, "avg_latency_ratio", _lat_ratios(lat_pairs, n))
        _put(d, "tail_ratio", _tail_ratios(tail_pairs, n, scored)[0] if scored else None)
        out[who] = d
    return out


def summarise(runs: dict, chosen: dict, spec: CompareSpec, models: list, attainable: dict) -> tuple[list, dict]:
    """``(cells, summary)`` of a compare (see the module docstring)."""
    n = len(spec.seeds)
    scored = [m for m in models if attainable[m]["attainable"]]
    cells = _cells(runs, chosen, spec, models, scored)
    tc = next(c for c in cells if c["tail_cell"])
    system = _comparison(cells, tc, scored, n, "fluid", ("rbatch",), False)
    sched = _comparison(cells, tc, scored, n, None, HARDWARE, True)
    sched["by_hardware"] = {hw: _comparison(cells, tc, scored, n, None, (hw,), True) for hw in HARDWARE}
    best = system["vs_best"]
    fl = tc["hardware"]["fluid"]["fluid"]
    summary = {
        "system": system, "scheduler_only": sched, "hardware_only": _hardware_only(cells, tc, scored, n),
        "tail_cell": {"pattern": tc["pattern"], "load": tc["load"], "metric": "own-SLO attainment, models equally "
                      "weighted", "scored_models": scored,
                      "unscored_models": [m for m in models if m not in scored],
                      "fluid_attainment": fl["attainment"], "fluid_attainment_req": fl["attainment_req"]},
        "tail_unattainable": not scored,
        # the figures under their earlier names: the system comparison against the best of all baselines
        "avg_latency_ratio": best["avg_latency_ratio"], "avg_latency_ratio_ci95": best["avg_latency_ratio_ci95"],
        "avg_latency_ratio_per_seed": best["avg_latency_ratio_per_seed"],
        "tail_slo_ratio": best["tail_ratio"], "tail_slo_ratio_ci95": best["tail_ratio_ci95"],
        "tail_slo_ratio_per_seed": best["tail_ratio_per_seed"],
        "paper": dict(PAPER),
    }
    return cells, summary
