"""Serving scenarios: devices (model, arrivals, SLO), horizon, warm-up; TOML loader; request draws."""
from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..workloads.model import EEModel
from .arrivals import MMPP2, ArrivalError, ArrivalProcess, GammaRenewal, Poisson, TraceError, TraceReplay

__all__ = ["Device", "Scenario", "ScenarioError", "Requests", "generate_requests", "for_requests", "draw_requests",
           "scale_rates", "load_scenario", "scenario_from_dict", "MAX_REQUESTS", "BYTES_PER_REQUEST",
           "requests_problem", "dropped_trace_rows"]

DEFAULT_SLO_MULTS = (2.0, 5.0, 10.0, 20.0, 50.0)

#: Requests per run at most (``--requests``, ``[compare].requests``): about 1.6 GiB and
#: two minutes of one core per run (docs/reliability.md).
MAX_REQUESTS = 5_000_000
#: Memory one simulated request costs (draws, simulator arrays, result columns), rounded
#: up from 332 bytes measured with benchmarks/bench_requests_memory.py (2026-12-03).
BYTES_PER_REQUEST = 340
#: A run's draw (``duration_s`` of arrivals) holds at most this many requests.
MAX_DRAW = 2 * MAX_REQUESTS


class ScenarioError(ValueError):
    """A scenario value breaks a rule; the message names field, value and rule."""


def _gib(n: float) -> str:
    return f"{n * BYTES_PER_REQUEST / 2**30:,.1f} GiB"


def requests_problem(n: int) -> str | None:
    """Why ``n`` requests per run are too many (None if they are not): the cap and the
    memory ``n`` would need."""
    if n > MAX_REQUESTS:
        return (f"{n:,}: at most {MAX_REQUESTS:,} requests per run (about {_gib(MAX_REQUESTS)} of memory); "
                f"{n:,} would need about {_gib(n)} ({BYTES_PER_REQUEST} bytes per request)")
    return None


def _num(where, name, v, lo=0.0, strict=True, integer=False):
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and \
        (v > lo if strict else v >= lo) and (not integer or float(v).is_integer())
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ScenarioError(f"{where}: {name} = {v!r}: must be {kind} {'>' if strict else '>='} {lo:g}")
    return int(v) if integer else float(v)


@dataclass(frozen=True)
class Device:
    """One request source: its model, arrival process and SLO.

    Give exactly one of ``slo_ms`` (absolute) or ``slo_mult`` (times the model's
    isolated batch-1 latency of the full network, from the SLO reference table).
    """
    name: str
    model: EEModel
    arrivals: ArrivalProcess
    slo_ms: float | None = None
    slo_mult: float | None = None

    def __post_init__(self):
        w = f"device {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ScenarioError(f"device: name = {self.name!r}: must be a non-empty string")
        if not isinstance(self.model, EEModel):
            raise ScenarioError(f"{w}: model = {type(self.model).__name__}: must be an EEModel")
        if not isinstance(self.arrivals, ArrivalProcess):
            raise ScenarioError(f"{w}: arrivals = {self.arrivals!r}: must be an arrival process "
                                f"(Poisson, GammaRenewal, MMPP2, TraceReplay)")
        if (self.slo_ms is None) == (self.slo_mult is None):
            raise ScenarioError(f"{w}: slo_ms = {self.slo_ms!r}, slo_mult = {self.slo_mult!r}: give exactly one")
        if self.slo_ms is not None:
            _num(w, "slo_ms", self.slo_ms)
        else:
            _num(w, "slo_mult", self.slo_mult)

    def slo_s(self, base_s: float) -> float:
        return self.slo_ms / 1e3 if self.slo_ms is not None else self.slo_mult * base_s


@dataclass(frozen=True)
class Scenario:
    """Devices streaming to one NPU for ``duration_s`` seconds of arrivals.

    Statistics leave out the first ``warmup_requests`` requests and those arriving
    before ``warmup_s``. ``queue_capacity`` (None: unbounded) drops arrivals that find
    the request FIFO full (reason ``queue_full``).
    """
    devices: tuple[Device, ...]
    duration_s: float
    warmup_requests: int = 0
    warmup_s: float = 0.0
    slo_mults: tuple[float, ...] = DEFAULT_SLO_MULTS
    queue_capacity: int | None = None
    name: str = "scenario"

    def __post_init__(self):
        w = f"scenario {self.name!r}"
        devs = tuple(self.devices)
        if not devs:
            raise ScenarioError(f"{w}: devices is empty: needs at least one device")
        names = [d.name for d in devs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ScenarioError(f"{w}: device names {dup} repeat: must be unique")
        models = {}
        for d in devs:
            if not isinstance(d, Device):
                raise ScenarioError(f"{w}: devices holds {type(d).__name__}: must hold Device objects")
            if models.setdefault(d.model.name, d.model) != d.model:
                raise ScenarioError(f"{w}: two different models are named {d.model.name!r}")
        object.__setattr__(self, "devices", devs)
        dwell = {}
        for d in devs:
            a = d.arrivals
            if isinstance(a, MMPP2) and a.group is not None and \
                    dwell.setdefault(a.group, (d.name, a.dwell_s))[1] != a.dwell_s:
                first, dw = dwell[a.group]
                raise ScenarioError(f"{w}: device {d.name!r}: arrivals.dwell_s = {list(a.dwell_s)} in group "
                                    f"{a.group!r}: must equal {list(dw)} (device {first!r}): a group shares one "
                                    f"state path")
        _num(w, "duration_s", self.duration_s)
        _num(w, "warmup_requests", self.warmup_requests, strict=False, integer=True)
        _num(w, "warmup_s", self.warmup_s, strict=False)
        if self.warmup_s >= self.duration_s:
            raise ScenarioError(f"{w}: warmup_s = {self.warmup_s!r}: must be below duration_s = {self.duration_s!r}")
        mults = tuple(self.slo_mults)
        if not mults:
            raise ScenarioError(f"{w}: slo_mults = []: give at least one multiple of the batch-1 latency "
                                f"(SLO attainment is reported at each; compare uses the smallest)")
        for i, m in enumerate(mults):
            _num(w, f"slo_mults[{i}]", m)
        object.__setattr__(self, "slo_mults", tuple(float(m) for m in mults))
        if self.queue_capacity is not None:
            _num(w, "queue_capacity", self.queue_capacity, integer=True)

    @property
    def models(self) -> tuple[EEModel, ...]:
        """Distinct models in first-use order."""
        seen = {}
        for d in self.devices:
            seen.setdefault(d.model.name, d.model)
        return tuple(seen.values())

    @property
    def mean_rate(self) -> float:
        return sum(d.arrivals.mean_rate for d in self.devices)


@dataclass(frozen=True)
class Requests:
    """All requests of one run, sorted by arrival: the draws every scheduler shares."""
    arrival: np.ndarray     #: seconds
    device: np.ndarray      #: device index
    model: np.ndarray       #: model index (into Scenario.models)
    exit: np.ndarray        #: drawn exit index (n_heads = final classifier)
    slo_s: np.ndarray       #: SLO budget in seconds
    deadline: np.ndarray = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "deadline", self.arrival + self.slo_s)

    def __len__(self):
        return int(self.arrival.size)


def _group_entropy(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def generate_requests(scenario: Scenario, seed: int, slo_base_s: Mapping[str, float]) -> Requests:
    """Draw arrivals and exits for every device, independent of any scheduler.

    Device ``i`` uses generators seeded by ``(seed, i, 0)`` (arrivals) and
    ``(seed, i, 1)`` (exits), so a seed fixes the same requests for every scheduler.
    MMPP devices of one ``group`` share a state path drawn from ``(seed, digest of the
    group name, 2)``, so adding a device changes no other device's draws.
    ``slo_base_s`` maps model name to the SLO base (isolated batch-1 latency).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ScenarioError(f"seed = {seed!r}: must be a non-negative integer")
    expected = _expected_draw(scenario)
    if expected > MAX_DRAW:
        raise ScenarioError(f"scenario {scenario.name!r}: duration_s = {scenario.duration_s:g} draws about "
                            f"{expected:,.0f} requests; a run draws at most {MAX_DRAW:,} (these would need about "
                            f"{_gib(expected)} of memory, {BYTES_PER_REQUEST} bytes per request): shorten duration_s")
    midx = {m.name: i for i, m in enumerate(scenario.models)}
    parts = []
    paths = {}
    for i, d in enumerate(scenario.devices):
        rng_a = np.random.default_rng(np.random.SeedSequence([int(seed), i, 0]))
        rng_e = np.random.default_rng(np.random.SeedSequence([int(seed), i, 1]))
        a = d.arrivals
        if isinstance(a, MMPP2) and a.group is not None:        # one state path per group, shared
            if a.group not in paths:
                paths[a.group] = a.state_path(np.random.default_rng(np.random.SeedSequence(
                    [int(seed), _group_entropy(a.group), 2])), scenario.duration_s)
            t = a.arrivals_on(rng_a, paths[a.group])
        else:
            t = np.asarray(a.generate(rng_a, scenario.duration_s), dtype=float)
        ex = rng_e.choice(d.model.n_exits, size=t.size, p=np.asarray(d.model.exit_probs, float) /
                          sum(d.model.exit_probs))
        if d.model.name not in slo_base_s:
            raise ScenarioError(f"device {d.name!r}: no SLO base latency for model {d.model.name!r}")
        parts.append((t, np.full(t.size, i), np.full(t.size, midx[d.model.name]), ex,
                      np.full(t.size, d.slo_s(slo_base_s[d.model.name]))))
    t, dev, mod, ex, slo = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((dev, t))
    return Requests(arrival=t[order], device=dev[order].astype(np.int64), model=mod[order].astype(np.int64),
                    exit=ex[order].astype(np.int64), slo_s=slo[order])


def _expected_draw(scenario: Scenario) -> float:
    """Requests a draw over ``duration_s`` holds on average (a trace: its rows before the end)."""
    n = 0.0
    for d in scenario.devices:
        a = d.arrivals
        n += (int(np.count_nonzero(a.rows() < scenario.duration_s)) if isinstance(a, TraceReplay)
              else a.mean_rate * scenario.duration_s)
    return n


def dropped_trace_rows(scenario: Scenario) -> list[tuple[str, str, int, int]]:
    """``(device, trace file, rows at or after duration_s, rows)`` of every trace device
    whose trace goes on past the scenario's end (those rows are not replayed)."""
    out = []
    for d in scenario.devices:
        a = d.arrivals
        if isinstance(a, TraceReplay):
            t = a.rows()
            late = int(np.count_nonzero(t >= scenario.duration_s))
            if late:
                out.append((d.name, a.path or "times", late, int(t.size)))
    return out


def scale_rates(scenario: Scenario, k: float) -> Scenario:
    """``scenario`` with every device's arrival rate times ``k`` (Poisson and gamma rates,
    both MMPP states; the burstiness stays). A trace has no rate to scale: an error."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ScenarioError(f"load factor = {k!r}: must be a number > 0")
    devs = []
    for d in scenario.devices:
        a = d.arrivals
        if isinstance(a, (Poisson, GammaRenewal)):
            a = replace(a, rate=a.rate * k)
        elif isinstance(a, MMPP2):
            a = replace(a, rates=tuple(r * k for r in a.rates))
        else:
            raise ScenarioError(f"device {d.name!r}: arrivals = {a.kind!r}: a trace has no rate to scale; "
                                f"scale its timestamps in the trace file")
        devs.append(replace(d, arrivals=a))
    return replace(scenario, devices=tuple(devs))


def for_requests(scenario: Scenario, n: int, seed: int) -> Scenario:
    """``scenario`` with a duration in which at least ``n`` requests arrive with ``seed``:
    1.2 n over the mean rate, doubled while the draw falls short; the warm-up time scales
    with it. A scenario whose arrivals end first (a trace) is an error naming both counts."""
    return draw_requests(scenario, n, seed, {m.name: 1.0 for m in scenario.models})[0]


def draw_requests(scenario: Scenario, n: int, seed: int, slo_base_s: Mapping[str, float]) -> tuple[Scenario, Requests]:
    """:func:`for_requests` and the draw it made: the scenario and its first ``n`` requests
    (the same as ``generate_requests`` on that scenario, truncated), drawn once."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ScenarioError(f"requests = {n!r}: must be a positive integer")
    problem = requests_problem(int(n))
    if problem:
        raise ScenarioError(f"requests = {problem}")
    if not scenario.mean_rate > 0:
        raise ScenarioError(f"requests = {n}: scenario {scenario.name!r} has no arrival rate (traces of one row "
                            f"each); give its duration_s instead")
    dur = n / scenario.mean_rate
    got = 0
    for _ in range(16):
        sc = replace(scenario, duration_s=1.2 * dur + 1e-9,
                     warmup_s=min(scenario.warmup_s, scenario.warmup_s / scenario.duration_s * dur))
        reqs = generate_requests(sc, seed, slo_base_s)
        got = len(reqs)
        if got >= n:
            if got > n:
                reqs = Requests(arrival=reqs.arrival[:n], device=reqs.device[:n], model=reqs.model[:n],
                                exit=reqs.exit[:n], slo_s=reqs.slo_s[:n])
            return sc, reqs
        dur *= 2
    raise ScenarioError(f"requests = {n}: scenario {scenario.name!r} gives only {got} requests with seed {seed} "
                        f"(in {sc.duration_s:.6g} s); ask for at most {got}")


# -- TOML ------------------------------------------------------------------------------

def _arrivals_from(w: str, a, base: Path, dev_name: str) -> ArrivalProcess:
    if not isinstance(a, dict):
        raise ScenarioError(f"{w}: arrivals = {a!r}: must be a table with 'kind'")
    kind = a.get("kind")
    allowed = {"poisson": {"rate"}, "gamma": {"rate", "cv"}, "mmpp": {"rates", "dwell_s", "group"},
               "trace": {"path", "device"}}
    if kind not in allowed:
        raise ScenarioError(f"{w}: arrivals.kind = {kind!r}: must be one of {sorted(allowed)}")
    extra = set(a) - allowed[kind] - {"kind"}
    if extra:
        raise ScenarioError(f"{w}: arrivals has unknown fields {sorted(extra)} for kind {kind!r}: "
                            f"allowed {sorted(allowed[kind])}")
    try:
        if kind == "poisson":
            return Poisson(a["rate"])
        if kind == "gamma":
            return GammaRenewal(a["rate"], a["cv"])
        if kind == "mmpp":
            return MMPP2(tuple(a["rates"]), tuple(a["dwell_s"]), a.get("group"))
        p = Path(a["path"])
        return TraceReplay(path=str(p if p.is_absolute() else base / p), device=str(a.get("device", dev_name)))
    except KeyError as e:
        raise ScenarioError(f"{w}: arrivals.{e.args[0]} is missing for kind {kind!r}") from None
    except (ArrivalError, TraceError) as e:
        raise ScenarioError(f"{w}: {e}") from None


def scenario_from_dict(d: dict, models: Mapping[str, EEModel] | Callable[[str], EEModel] | None = None,
                       base: Path | str = ".", where: str = "scenario") -> Scenario:
    """Build a :class:`Scenario` from a parsed TOML dict (see docs/serving.md).

    A device's ``model`` is a zoo name or a model TOML path relative to ``base``; a
    ``models`` callable (default: the zoo, or the file) gets the name, or the file's
    absolute path; a ``models`` mapping is looked up by the value as written."""
    top = {"name", "duration_s", "warmup_requests", "warmup_s", "slo_mults", "queue_capacity", "device",
           "compare"}   # [compare]: the sweep of fluidnpu compare, read by sim.serving.compare
    extra = set(d) - top
    if extra:
        raise ScenarioError(f"{where}: unknown fields {sorted(extra)}: allowed {sorted(top)}")
    devs_in = d.get("device")
    if not isinstance(devs_in, list) or not devs_in:
        raise ScenarioError(f"{where}: [[device]] entries are missing: need at least one")
    if models is None:
        def models(ref):  # noqa: E306 - resolved lazily so tests never need the zoo
            from ..workloads import zoo  # type: ignore[attr-defined]
            return zoo.resolve_model(ref)
    look = models.__getitem__ if isinstance(models, Mapping) else models
    devices = []
    dev_fields = {"name", "model", "arrivals", "slo_ms", "slo_mult", "count"}
    for k, e in enumerate(devs_in):
        w = f"{where}: device[{k}]"
        if not isinstance(e, dict):
            raise ScenarioError(f"{w}: must be a table")
        extra = set(e) - dev_fields
        if extra:
            raise ScenarioError(f"{w}: unknown fields {sorted(extra)}: allowed {sorted(dev_fields)}")
        for req in ("name", "model", "arrivals"):
            if req not in e:
                raise ScenarioError(f"{w}: field {req!r} is missing")
        ref = e["model"]
        if not isinstance(models, Mapping) and isinstance(ref, str) and Path(ref).suffix.lower() == ".toml":
            ref = str((Path(base) / ref).resolve())     # a model file, relative to the scenario
        try:
            model = look(ref)
        except (KeyError, LookupError, FileNotFoundError, ValueError) as x:
            raise ScenarioError(f"{w}: model = {e['model']!r}: unknown model ({x})") from None
        count = _num(w, "count", e.get("count", 1), integer=True)
        for c in range(count):
            name = e["name"] if count == 1 else f"{e['name']}{c}"
            arr = _arrivals_from(f"{w} ({name})", e["arrivals"], Path(base), name)
            try:
                devices.append(Device(name, model, arr, slo_ms=e.get("slo_ms"), slo_mult=e.get("slo_mult")))
            except ScenarioError as x:
                raise ScenarioError(f"{where}: {x}") from None
    kw = {k: d[k] for k in ("name", "duration_s", "warmup_requests", "warmup_s", "queue_capacity") if k in d}
    if "slo_mults" in d:
        kw["slo_mults"] = tuple(d["slo_mults"])
    if "duration_s" not in kw:
        raise ScenarioError(f"{where}: field 'duration_s' is missing")
    return Scenario(devices=tuple(devices), **kw)


def load_scenario(path, models=None) -> Scenario:
    """Load a scenario TOML file; ``models`` maps model names to EEModels (default: the zoo)."""
    from fluidnpu.textfiles import TextFileError, read_text
    p = Path(path)
    try:
        d = tomllib.loads(read_text(p))
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read ({e.strerror})") from None
    except TextFileError as e:
        raise ScenarioError(str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML ({e})") from None
    d.setdefault("name", p.stem)
    return scenario_from_dict(d, models=models, base=p.parent, where=str(p))
