"""The ``[compare]`` table of a scenario: what ``fluidnpu compare`` sweeps, and its checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fluidnpu import sched as _sched

from .scenario import Scenario, ScenarioError, load_scenario

__all__ = ["DEFAULT_SCENARIO", "PATTERNS", "BASELINES", "THROUGHPUT", "PREEMPTIVE", "SCHEDULERS", "DEFAULT_GRID",
           "CompareSpec", "parse_compare", "load_with_spec", "default_scenario"]

DEFAULT_SCENARIO = Path(__file__).with_name("default_scenario.toml")
#: arrival patterns, calmest first (the tail cell is the burstiest one swept)
PATTERNS = ("steady", "spiking", "correlated")
#: the baseline classes: throughput-maximising (the paper's comparison) and preemptive
THROUGHPUT = ("fcfs", "dynamic", "clipper", "lazy")
PREEMPTIVE = ("prema",)
#: the one list of schedulers is the registry's (fluidnpu.sched); the classes split its baselines
SCHEDULERS = _sched.SCHEDULERS
BASELINES = _sched.BASELINES
if set(THROUGHPUT + PREEMPTIVE) != set(BASELINES):     # a new baseline must be given a class
    raise ImportError(f"compare: baseline classes {THROUGHPUT + PREEMPTIVE} do not cover the registry's "
                      f"baselines {BASELINES}")
HARDWARE = ("rbatch", "fluid")

#: the baselines' knob grids (small on purpose: every point runs on each tuning seed, cell and hardware)
DEFAULT_GRID: dict[str, list[dict]] = {
    "fcfs": [{}],
    "dynamic": [{"max_batch": b, "max_delay_ms": d} for b in (4, 16) for d in (0.0, 0.5, 2.0)],
    "clipper": [{"slo_fraction": f, "backoff": k} for f in (0.5, 1.0) for k in (0.1, 0.3)],
    "lazy": [{"max_batch": b, "slack_ms": s} for b in (4, 16) for s in (0.0, 2.0)],
    "prema": [{"threshold": t} for t in (0.0, 0.25, 0.5, 0.75)],
    "fluid": [{}],
}
DEFAULT_SWEEP = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0)


@dataclass(frozen=True)
class CompareSpec:
    """The sweep of ``fluidnpu compare`` (docs/serving.md, "compare")."""
    loads: tuple[float, ...] = (0.4, 0.6, 0.8)
    patterns: tuple[str, ...] = PATTERNS
    seeds: tuple[int, ...] = tuple(range(1, 11))
    tune_seeds: int = 3                #: the first this many seeds tune the baselines' knobs
    requests: int = 5000
    spike_ratio: float = 4.0
    spike_dwell_s: tuple[float, float] = (2.0, 0.5)
    warmup_frac: float = 0.05
    sweep_mults: tuple[float, ...] = DEFAULT_SWEEP
    probe_load: float = 0.2            #: the low load at which an SLO must be attainable to be scored
    attainable: float = 0.99           #: ... by some scheduler for at least this share of its requests
    grid: dict = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRID.items()})

    def __post_init__(self):
        object.__setattr__(self, "tune_seeds", min(self.tune_seeds, len(self.seeds)))

    @property
    def tail_pattern(self) -> str:
        """The burstiest pattern swept: the tail figure's cell is this pattern at the highest load."""
        return max(self.patterns, key=PATTERNS.index)

    def to_dict(self) -> dict:
        return {"loads": list(self.loads), "patterns": list(self.patterns), "seeds": list(self.seeds),
                "tune_seeds": self.tune_seeds, "requests": self.requests,
                "spike": {"ratio": self.spike_ratio, "dwell_s": list(self.spike_dwell_s)},
                "warmup_frac": self.warmup_frac, "sweep_mults": list(self.sweep_mults),
                "probe_load": self.probe_load, "attainable": self.attainable, "grid": self.grid}


def _err(where, name, value, rule):
    raise ScenarioError(f"{where}: {name} = {value!r}: {rule}")


def _pos_num(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _grid(w: str, g) -> dict:
    from fluidnpu.sched import SchedulerError, make
    if not isinstance(g, dict):
        _err(w, "grid", g, "must be a table: scheduler name -> list of knob tables")
    grid = {k: list(v) for k, v in DEFAULT_GRID.items()}
    for name, pts in g.items():
        if name not in SCHEDULERS:
            _err(w, "grid", name, f"unknown scheduler; allowed {list(SCHEDULERS)}")
        if not isinstance(pts, list) or not pts or not all(isinstance(p, dict) for p in pts):
            _err(w, f"grid.{name}", pts, "must be a non-empty list of knob tables")
        for p in pts:
            try:
                make(name, **p)
            except SchedulerError as e:
                raise ScenarioError(f"{w}: grid.{name}: {e}") from None
        grid[name] = [dict(p) for p in pts]
    return grid


def _spike(w: str, s, kw: dict) -> None:
    if not isinstance(s, dict) or set(s) - {"ratio", "dwell_s"}:
        _err(w, "spike", s, "must be a table with fields ratio, dwell_s")
    if "ratio" in s:
        if not _pos_num(s["ratio"]) or s["ratio"] < 1:
            _err(w, "spike.ratio", s["ratio"], "must be a number >= 1 (high-state rate / low-state rate)")
        kw["spike_ratio"] = float(s["ratio"])
    if "dwell_s" in s:
        v = s["dwell_s"]
        if not isinstance(v, list) or len(v) != 2 or not all(_pos_num(x) for x in v):
            _err(w, "spike.dwell_s", v, "must be two positive mean dwell times [low, high] in seconds")
        kw["spike_dwell_s"] = (float(v[0]), float(v[1]))


def parse_compare(d, where: str = "scenario") -> CompareSpec:
    """A :class:`CompareSpec` from a scenario's ``[compare]`` table (None: the defaults)."""
    if d is None:
        return CompareSpec()
    w = f"{where}: [compare]"
    if not isinstance(d, dict):
        _err(where, "compare", d, "must be a table")
    allowed = {"loads", "patterns", "seeds", "tune_seeds", "requests", "spike", "warmup_frac", "sweep_mults",
               "probe_load", "attainable", "grid"}
    extra = set(d) - allowed
    if extra:
        raise ScenarioError(f"{w}: unknown fields {sorted(extra)}: allowed {sorted(allowed)}")
    kw = {}
    if "loads" in d:
        v = d["loads"]
        if not isinstance(v, list) or not v or not all(_pos_num(x) and x <= 2 for x in v):
            _err(w, "loads", v, "must be a non-empty list of fractions of the batch-1 capacity in (0, 2]")
        kw["loads"] = tuple(sorted(float(x) for x in v))
    if "patterns" in d:
        v = d["patterns"]
        if not isinstance(v, list) or not v or any(p not in PATTERNS for p in v) or len(set(v)) != len(v):
            _err(w, "patterns", v, f"must be a non-empty list of distinct values from {list(PATTERNS)}")
        kw["patterns"] = tuple(v)
    if "seeds" in d:
        v = d["seeds"]
        if not isinstance(v, list) or not v or any(not _int(x) or x < 0 for x in v) or len(set(v)) != len(v):
            _err(w, "seeds", v, "must be a non-empty list of distinct non-negative integers")
        kw["seeds"] = tuple(v)
    if "tune_seeds" in d:
        v = d["tune_seeds"]
        n = len(kw.get("seeds", CompareSpec.seeds))
        if not _int(v) or not 1 <= v <= n:
            _err(w, "tune_seeds", v, f"must be an integer from 1 to the number of seeds ({n})")
        kw["tune_seeds"] = v
    if "requests" in d:
        v = d["requests"]
        if not _int(v) or v < 50:
            _err(w, "requests", v, "must be an integer >= 50 (requests per run)")
        kw["requests"] = v
    if "warmup_frac" in d:
        v = d["warmup_frac"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 0.5:
            _err(w, "warmup_frac", v, "must be a number in [0, 0.5)")
        kw["warmup_frac"] = float(v)
    if "sweep_mults" in d:
        v = d["sweep_mults"]
        if not isinstance(v, list) or not v or not all(_pos_num(x) for x in v) or sorted(set(v)) != list(v):
            _err(w, "sweep_mults", v, "must be a non-empty increasing list of positive SLO multipliers")
        kw["sweep_mults"] = tuple(float(x) for x in v)
    if "probe_load" in d:
        v = d["probe_load"]
        if not _pos_num(v) or v > 2:
            _err(w, "probe_load", v, "must be a fraction of the batch-1 capacity in (0, 2]")
        kw["probe_load"] = float(v)
    if "attainable" in d:
        v = d["attainable"]
        if not _pos_num(v) or v > 1:
            _err(w, "attainable", v, "must be a share of requests in (0, 1]")
        kw["attainable"] = float(v)
    if "spike" in d:
        _spike(w, d["spike"], kw)
    if "grid" in d:
        kw["grid"] = _grid(w, d["grid"])
    return CompareSpec(**kw)


def load_with_spec(path=None, models=None) -> tuple[Scenario, CompareSpec]:
    """Load a scenario TOML (default: the shipped one) and its ``[compare]`` table."""
    import tomllib
    p = Path(DEFAULT_SCENARIO if path is None else path)
    sc = load_scenario(p, models=models)
    d = tomllib.loads(p.read_text())
    return sc, parse_compare(d.get("compare"), where=str(p))


def default_scenario(models=None) -> Scenario:
    """The shipped default scenario (``sim/serving/default_scenario.toml``)."""
    return load_scenario(DEFAULT_SCENARIO, models=models)
