"""The scheduler comparison behind ``fluidnpu compare`` (and the serving defaults of ``fluidnpu serve``).

A scenario's ``[compare]`` table (:mod:`.compare_spec`) sets the sweep: loads (fractions
of the NPU's batch-1 capacity), arrival patterns (``steady``: Poisson; ``spiking``: a
two-state MMPP per device with the same mean rate; ``correlated``: the same MMPP with
one state path shared by every device), seeds and requests per run. Every scheduler
runs on *both* hardware variants (``rbatch``, ``fluid``) in every (pattern, load)
*cell*, so two comparisons come from the same runs: *system* (``fluid`` on fluid
hardware against each baseline on rbatch hardware: what adopting the whole design
gives) and *scheduler only* (every scheduler on the same hardware). Each baseline's
knobs are tuned per cell and hardware on the first ``tune_seeds`` seeds (lowest mean
latency; highest SLO attainment), then run on every seed. A probe at a low load
(``probe_load``, steady) decides which models' SLOs are attainable at all. All runs of
a seed share the very same requests and exits; SLO multipliers refer to the ``rbatch``
batch-1 latency. The figures are built by :mod:`.compare_summary`; see docs/serving.md.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .arrivals import MMPP2, Poisson, TraceReplay
from .compare_spec import (BASELINES, DEFAULT_GRID, DEFAULT_SCENARIO, HARDWARE, PATTERNS, PREEMPTIVE, SCHEDULERS,
                           THROUGHPUT, CompareSpec, default_scenario, load_with_spec, parse_compare)
from .metrics import run_metrics
from .run import run, slo_bases
from .scenario import Requests, Scenario, ScenarioError, generate_requests
from .tables import mapper_tables

__all__ = ["DEFAULT_SCENARIO", "CompareSpec", "DEFAULT_GRID", "BASELINES", "THROUGHPUT", "PREEMPTIVE", "SCHEDULERS",
           "PATTERNS", "HARDWARE", "parse_compare", "load_with_spec", "default_scenario", "serving_tables",
           "expected_batch1_s", "scaled_scenario", "truncate_requests", "run_compare", "CompareResult", "PROBE"]

#: the pattern name of the attainability probe's runs (steady arrivals at ``probe_load``)
PROBE = "probe"


def serving_tables(scenario: Scenario, cfg=None, b_max: int = 16, mem=None) -> dict[str, dict]:
    """``{"rbatch": {...}, "fluid": {...}}``: the mapper's latency tables of every scenario model
    (``mem``: the memory timing, a :class:`~fluidnpu.hw.runner.MemTiming`; default ``MemTiming()``)."""
    return {hw: mapper_tables(scenario.models, hw, cfg, b_max, mem) for hw in HARDWARE}


def expected_batch1_s(model, table) -> float:
    """A request's expected isolated batch-1 service time (exit paths weighted by exit rates)."""
    p = np.asarray(model.exit_probs, dtype=float)
    p = p / p.sum()
    return float(sum(p[i] * table.batch1_latency_s(i) for i in range(p.size)))


def scaled_scenario(sc: Scenario, ref_tables: dict, load: float, pattern: str, requests: int,
                    spec: CompareSpec = CompareSpec()) -> Scenario:
    """``sc`` with every device's rate scaled so the batch-1 work per second equals ``load``.

    The devices keep their rate proportions; ``steady`` makes each a Poisson process,
    ``spiking`` a two-state MMPP with the same mean rate, ``correlated`` the same MMPP
    with one state path for all devices (group ``"correlated"``). The horizon holds about
    ``requests`` arrivals; ``spec.warmup_frac`` of it is warm-up.
    """
    if pattern == PROBE:
        pattern = "steady"
    if pattern not in PATTERNS:
        raise ScenarioError(f"pattern = {pattern!r}: must be one of {list(PATTERNS)}")
    for d in sc.devices:
        if isinstance(d.arrivals, TraceReplay):
            raise ScenarioError(f"device {d.name!r}: arrivals.kind = 'trace': compare re-draws arrivals per "
                                f"load and pattern; allowed kinds here: poisson, gamma, mmpp")
    work = sum(d.arrivals.mean_rate * expected_batch1_s(d.model, ref_tables[d.model.name]) for d in sc.devices)
    k = load / work
    r, (dl, dh) = spec.spike_ratio, spec.spike_dwell_s
    group = "correlated" if pattern == "correlated" else None
    devs = []
    for d in sc.devices:
        lam = d.arrivals.mean_rate * k
        if pattern == "steady":
            a = Poisson(lam)
        else:
            lo = lam * (dl + dh) / (dl + r * dh)
            a = MMPP2((lo, lo * r), (dl, dh), group)
        devs.append(replace(d, arrivals=a))
    rate = sum(d.arrivals.mean_rate for d in devs)
    dur = requests / rate
    return replace(sc, devices=tuple(devs), duration_s=dur, warmup_s=spec.warmup_frac * dur, warmup_requests=0,
                   name=f"{sc.name}/{pattern}@{load:g}")


def truncate_requests(reqs, n: int):
    """The first ``n`` requests (by arrival) of a draw."""
    if len(reqs) <= n:
        return reqs
    return Requests(arrival=reqs.arrival[:n], device=reqs.device[:n], model=reqs.model[:n], exit=reqs.exit[:n],
                    slo_s=reqs.slo_s[:n])


# -- the runs ----------------------------------------------------------------------------

_CTX: dict = {}


def _kj(knobs: dict) -> str:
    return json.dumps(knobs, sort_keys=True)


def _work(task):
    """One (cell, seed): draw the requests once, run every (scheduler, knobs, hardware) of the task."""
    pattern, load, seed, runs = task
    sc, spec, tabs = _CTX["scenario"], _CTX["spec"], _CTX["tables"]
    ref = tabs["rbatch"]
    s2 = scaled_scenario(sc, ref, load, pattern, spec.requests, spec)
    reqs = truncate_requests(generate_requests(s2, seed, slo_bases(s2, ref)), spec.requests)
    out = []
    for name, knobs, hw in runs:
        t0 = time.perf_counter()
        res = run(s2, (name, knobs), tabs[hw], seed, slo_reference=ref, requests=reqs)
        m = run_metrics(res, spec.sweep_mults)
        m["wall_s"] = time.perf_counter() - t0
        out.append(((pattern, load, seed, name, _kj(knobs), hw), m))
    return out


def _pool_map(tasks, jobs, progress):
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            r = _work(t)
            progress(len(t[3]))
            yield r
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("fork")
    # longest tasks first, so the pool does not end on one long task
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][3]) * tasks[i][1])
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
        futs = {ex.submit(_work, tasks[i]): tasks[i] for i in order}
        try:
            for f in as_completed(futs):
                progress(len(futs[f][3]))
                yield f.result()
        except BaseException:
            for f in futs:
                f.cancel()
            raise


@dataclass
class CompareResult:
    scenario: str
    spec: CompareSpec
    runs: dict                     #: (pattern, load, seed, scheduler, knobs json, hardware) -> metrics
    chosen: dict                   #: (pattern, load, scheduler, hardware) -> (latency knobs json, SLO knobs json)
    models: list                   #: model names of the scenario, in order
    attainable: dict               #: model -> {"attainable": bool, "best": attainment at the probe, "by": run}
    cells: list                    #: per (pattern, load): figures per hardware and scheduler, best baselines
    summary: dict
    elapsed_s: float
    files: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "spec": self.spec.to_dict(), "seeds": list(self.spec.seeds),
                "models": self.models, "attainable": self.attainable, "summary": self.summary,
                "cells": self.cells, "elapsed_s": self.elapsed_s, "files": self.files}


def _probe_attainable(runs: dict, spec: CompareSpec, models: list) -> dict:
    """Per model: the best mean own-SLO attainment at the probe over every scheduler and hardware; the SLO is
    attainable when that reaches ``spec.attainable`` (a model with no request at the probe is kept)."""
    seeds = spec.seeds[:spec.tune_seeds]
    out = {}
    for m in models:
        best, by = float("nan"), None
        for name in SCHEDULERS:
            for hw in HARDWARE:
                vals = [runs[(PROBE, spec.probe_load, s, name, "{}", hw)]["per_model"].get(m, {}).get("attainment")
                        for s in seeds]
                vals = [v for v in vals if v is not None]
                if vals and not (np.mean(vals) <= best):
                    best, by = float(np.mean(vals)), f"{name}@{hw}"
        if by is None:                  # no request of the model at the probe: no evidence against it
            out[m] = {"attainable": True, "best": None, "by": None, "note": "no requests at the probe"}
        else:
            out[m] = {"attainable": bool(best >= spec.attainable), "best": best, "by": by}
    return out


def _tail_score(m: dict, scored: list) -> float:
    """SLO attainment on the devices' own SLOs, each scored model weighted equally."""
    v = [m["per_model"][k]["attainment"] for k in scored if k in m["per_model"]]
    return float(np.mean(v)) if v else float("nan")


def run_compare(scenario: Scenario, spec: CompareSpec, tables: dict | None = None, *, jobs: int | None = None,
                progress=None) -> CompareResult:
    """Run the sweep. ``tables``: ``{"rbatch": {...}, "fluid": {...}}`` (default: the mapper's).

    ``progress(done_runs, total_runs)`` is called as runs complete (the total grows once,
    when the evaluation runs are known).
    """
    from .compare_summary import summarise
    t_start = time.perf_counter()
    tabs = serving_tables(scenario) if tables is None else tables
    jobs = min(2, os.cpu_count() or 1) if jobs is None else max(1, int(jobs))
    cells = [(p, l) for p in spec.patterns for l in spec.loads]
    scaled_scenario(scenario, tabs["rbatch"], spec.loads[0], spec.patterns[0], spec.requests, spec)   # fail early
    models = [m.name for m in scenario.models]
    tune, rest = spec.seeds[:spec.tune_seeds], spec.seeds[spec.tune_seeds:]
    grid_runs = [(name, k, hw) for name in SCHEDULERS for k in spec.grid[name] for hw in HARDWARE]
    probe_runs = [(name, {}, hw) for name in SCHEDULERS for hw in HARDWARE]
    tasks = [(PROBE, spec.probe_load, s, probe_runs) for s in tune] + \
            [(p, l, s, grid_runs) for p, l in cells for s in tune]
    state = {"done": 0, "total": sum(len(t[3]) for t in tasks) + len(cells) * len(rest) * len(probe_runs)}

    def tick(n):
        state["done"] += n
        if progress:
            progress(state["done"], max(state["total"], state["done"]))

    _CTX.update(scenario=scenario, spec=spec, tables=tabs)
    runs: dict = {}
    for out in _pool_map(tasks, jobs, tick):
        runs.update(out)
    attainable = _probe_attainable(runs, spec, models)
    scored = [m for m in models if attainable[m]["attainable"]]

    def mean_of(p, l, name, kj, hw, f):
        return float(np.mean([f(runs[(p, l, s, name, kj, hw)]) for s in tune]))

    chosen = {}
    for p, l in cells:
        for name in SCHEDULERS:
            for hw in HARDWARE:
                pts = [_kj(k) for k in spec.grid[name]]
                lat = min(pts, key=lambda kj: mean_of(p, l, name, kj, hw, lambda m: m["mean_ms"]))
                slo = max(pts, key=lambda kj: mean_of(p, l, name, kj, hw, lambda m: _tail_score(m, scored))) \
                    if scored else lat
                chosen[(p, l, name, hw)] = (lat, slo)
    tasks2 = []
    for p, l in cells:
        want = sorted({(name, kj, hw) for name in SCHEDULERS for hw in HARDWARE for kj in chosen[(p, l, name, hw)]})
        tasks2 += [(p, l, s, [(n, json.loads(kj), hw) for n, kj, hw in want]) for s in rest]
    state["total"] = state["done"] + sum(len(t[3]) for t in tasks2)
    for out in _pool_map(tasks2, jobs, tick):
        runs.update(out)
    cell_out, summary = summarise(runs, chosen, spec, models, attainable)
    return CompareResult(scenario=scenario.name, spec=spec, runs=runs, chosen=chosen, models=models,
                         attainable=attainable, cells=cell_out, summary=summary,
                         elapsed_s=time.perf_counter() - t_start)
