"""``run(scenario, scheduler, tables, seed) -> Result``: the Python entry point of the serving simulator."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..latency import LatencyTable
from .plan import ModelPlan
from .result import Result
from .scenario import Requests, Scenario, ScenarioError, generate_requests, load_scenario, scenario_from_dict
from .simulator import Simulator

__all__ = ["run", "resolve_tables", "as_scenario", "slo_bases", "warm_window"]


def as_scenario(s, models=None) -> Scenario:
    """A Scenario from a Scenario, a TOML path or a parsed dict."""
    if isinstance(s, Scenario):
        return s
    if isinstance(s, (str, Path)):
        return load_scenario(s, models=models)
    if isinstance(s, dict):
        return scenario_from_dict(s, models=models)
    raise ScenarioError(f"scenario = {type(s).__name__}: must be a Scenario, a TOML path or a dict")


def resolve_tables(tables, scenario: Scenario, what: str = "tables") -> dict[str, LatencyTable]:
    """Map each scenario model name to its table; tables may be one table, a list or a dict."""
    if isinstance(tables, LatencyTable):
        tables = [tables]
    if isinstance(tables, Mapping):
        by = dict(tables)
    else:
        by = {}
        for t in tables:
            if not isinstance(t, LatencyTable):
                raise ScenarioError(f"{what}: holds {type(t).__name__}: must hold LatencyTable objects")
            if t.model in by:
                raise ScenarioError(f"{what}: two tables for model {t.model!r}")
            by[t.model] = t
    out = {}
    for m in scenario.models:
        if m.name not in by:
            raise ScenarioError(f"{what}: no latency table for model {m.name!r} (have {sorted(by)})")
        t = by[m.name]
        t.check_model(m)
        out[m.name] = t
    hw = {t.hardware for t in out.values()}
    clk = {t.clock_mhz for t in out.values()}
    if len(hw) > 1 or len(clk) > 1:
        raise ScenarioError(f"{what}: tables of one run must share hardware and clock; got {sorted(hw)}, "
                            f"{sorted(clk)} MHz")
    return out


def slo_bases(scenario: Scenario, tables) -> dict[str, float]:
    """Per model: isolated batch-1 full-network latency (seconds) from ``tables`` (the SLO base)."""
    return {name: t.batch1_latency_s() for name, t in resolve_tables(tables, scenario, "slo_reference").items()}


def warm_window(sc: Scenario, arrival: np.ndarray) -> tuple[np.ndarray, float]:
    """Requests outside the warm-up (``measured``) and the time statistics start (inf if none)."""
    measured = (np.arange(arrival.size) >= sc.warmup_requests) & (arrival >= sc.warmup_s)
    if not measured.any():
        return measured, float("inf")
    if sc.warmup_requests > 0:
        return measured, max(sc.warmup_s, float(arrival[measured][0]))
    return measured, float(sc.warmup_s)


_PLANS: dict = {}


def _plan(i: int, model, table: LatencyTable, base: float) -> ModelPlan:
    """A ModelPlan, reused while the same table object, model and SLO base come back (compare
    runs thousands of times on a few tables; a plan is read-only once built)."""
    key = (i, id(table), id(model), base)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is table and hit[1] is model:
        return hit[2]
    if len(_PLANS) > 64:
        _PLANS.clear()
    plan = ModelPlan(i, model, table, base)
    _PLANS[key] = (table, model, plan)
    return plan


def run(scenario, scheduler, tables, seed: int = 0, *, slo_reference=None, check: bool = False,
        models=None, requests: Requests | None = None) -> Result:
    """Simulate ``scenario`` served by ``scheduler`` on the hardware described by ``tables``.

    ``scheduler``: a Scheduler, a registry name, or ``(name, {knobs})``. ``tables``: one
    LatencyTable, a list, or a dict by model name (one hardware variant). SLO multipliers
    are resolved against ``slo_reference`` (default: ``tables``); use the same reference
    when comparing hardware variants. ``check=True`` verifies the invariants as it runs
    and keeps an op log. The same ``seed`` gives every scheduler the same requests.
    """
    from fluidnpu.sched import make
    sc = as_scenario(scenario, models=models)
    if isinstance(scheduler, tuple):
        scheduler = make(scheduler[0], **dict(scheduler[1]))
    elif isinstance(scheduler, str):
        scheduler = make(scheduler)
    tabs = resolve_tables(tables, sc)
    base = slo_bases(sc, tabs if slo_reference is None else slo_reference)
    if requests is None:
        requests = generate_requests(sc, seed, base)
    plans = [_plan(i, m, tabs[m.name], base[m.name]) for i, m in enumerate(sc.models)]
    n = len(requests)
    measured, t_warm = warm_window(sc, requests.arrival)
    sim = Simulator(requests, plans, scheduler, warmup_t=t_warm, queue_capacity=sc.queue_capacity, check=check)
    sim.run()
    t_end = sim.t_end
    if not measured.any():
        t_warm = t_end
    span = t_end - t_warm
    t0 = next(iter(tabs.values()))
    peaks = [t.peak_macs_per_cycle for t in tabs.values()]
    mac_util = None
    if all(p is not None for p in peaks) and span > 0:
        mac_util = sim.macs_w / (peaks[0] * span * t0.clock_mhz * 1e6)
    reasons = np.array([""] * n, dtype=object)
    for r, why in sim.drop_reason.items():
        reasons[r] = why
    return Result(scheduler=scheduler.name, knobs=dict(scheduler.knobs), hardware=t0.hardware, seed=int(seed),
                  devices=[d.name for d in sc.devices], models=[m.name for m in sc.models],
                  n_heads=[len(m.exits) for m in sc.models], arrival=requests.arrival.copy(),
                  start=np.asarray(sim.start, dtype=float), finish=np.asarray(sim.finish, dtype=float),
                  exit=np.asarray(sim.exit_taken, dtype=np.int64), device=requests.device.copy(),
                  model=requests.model.copy(), slo_s=requests.slo_s.copy(), drop_reason=reasons,
                  measured=measured, slo_base_s=[base[m.name] for m in sc.models], slo_mults=sc.slo_mults,
                  t_warm=t_warm, t_end=t_end, busy_s=sim.busy_w, mac_util=mac_util,
                  preemptions=sim.preemptions, merges=sim.merges, op_hist=np.asarray(sim.op_hist),
                  start_hist=np.asarray(sim.start_hist), op_log=sim.op_log)
