"""Arrival processes: Poisson, Gamma renewal (burstiness), 2-state MMPP (spikes), trace replay.

Every process has ``generate(rng, duration_s) -> sorted float64 array`` of arrival
times in ``[0, duration_s)`` (seconds) and ``mean_rate`` (requests per second).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ArrivalProcess", "Poisson", "GammaRenewal", "MMPP2", "TraceReplay", "TraceError", "read_trace",
           "ArrivalError"]


class ArrivalError(ValueError):
    """An arrival-process parameter breaks a rule."""


class TraceError(ValueError):
    """A malformed trace file; the message names file, line and field."""


def _pos(owner: str, name: str, v, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
            (v == 0 and not allow_zero):
        raise ArrivalError(f"{owner}: {name} = {v!r}: must be a {'non-negative' if allow_zero else 'positive'} "
                           f"finite number")
    return float(v)


def _renewal(rng: np.random.Generator, duration: float, rate: float, draw) -> np.ndarray:
    """Cumulative sums of inter-arrival draws ``draw(rng, n)`` until ``duration``."""
    out, t0 = [], 0.0
    while True:
        n = int(rate * (duration - t0) + 5 * math.sqrt(rate * (duration - t0) + 1) + 16)
        t = t0 + np.cumsum(draw(rng, n))
        if t[-1] >= duration:
            out.append(t[t < duration])
            break
        out.append(t)
        t0 = float(t[-1])
    return np.concatenate(out)


class ArrivalProcess:
    """Base class; subclasses are frozen dataclasses."""
    kind = "base"

    def generate(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @property
    def mean_rate(self) -> float:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Poisson(ArrivalProcess):
    """Poisson arrivals at ``rate`` per second."""
    rate: float
    kind = "poisson"

    def __post_init__(self):
        _pos("poisson arrivals", "rate", self.rate)

    @property
    def mean_rate(self) -> float:
        return float(self.rate)

    def generate(self, rng, duration_s):
        n = rng.poisson(self.rate * duration_s)
        return np.sort(rng.uniform(0.0, duration_s, n))


@dataclass(frozen=True)
class GammaRenewal(ArrivalProcess):
    """Renewal process with Gamma inter-arrival times: mean ``1/rate``, coefficient of variation ``cv``.

    ``cv = 1`` is Poisson; ``cv > 1`` is bursty; ``cv < 1`` is smoother.
    """
    rate: float
    cv: float
    kind = "gamma"

    def __post_init__(self):
        _pos("gamma arrivals", "rate", self.rate)
        _pos("gamma arrivals", "cv", self.cv)

    @property
    def mean_rate(self) -> float:
        return float(self.rate)

    def generate(self, rng, duration_s):
        shape = 1.0 / (self.cv * self.cv)
        scale = 1.0 / (self.rate * shape)
        return _renewal(rng, duration_s, self.rate, lambda r, n: r.gamma(shape, scale, n))


@dataclass(frozen=True)
class MMPP2(ArrivalProcess):
    """Two-state Markov-modulated Poisson process (for spikes).

    In state ``i`` arrivals are Poisson at ``rates[i]``; the state lasts an exponential
    time of mean ``dwell_s[i]`` seconds, then switches. The start state is drawn from
    the stationary distribution. Devices whose processes name the same ``group`` share
    one state path (correlated bursts: a home's devices spike together); each keeps its
    own rates and its own Poisson draws. A group's members must have the same dwell times.
    """
    rates: tuple[float, float]
    dwell_s: tuple[float, float]
    group: str | None = None
    kind = "mmpp"

    def __post_init__(self):
        for name in ("rates", "dwell_s"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                raise ArrivalError(f"mmpp arrivals: {name} = {v!r}: must be two numbers (one per state)")
            object.__setattr__(self, name, tuple(v))
        for i in range(2):
            _pos("mmpp arrivals", f"rates[{i}]", self.rates[i], allow_zero=True)
            _pos("mmpp arrivals", f"dwell_s[{i}]", self.dwell_s[i])
        if self.rates[0] + self.rates[1] <= 0:
            raise ArrivalError(f"mmpp arrivals: rates = {self.rates!r}: at least one must be positive")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ArrivalError(f"mmpp arrivals: group = {self.group!r}: must be a non-empty string (or absent)")

    @property
    def mean_rate(self) -> float:
        (r0, r1), (d0, d1) = self.rates, self.dwell_s
        return (r0 * d0 + r1 * d1) / (d0 + d1)

    def state_path(self, rng, duration_s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The modulating states: interval starts, ends and state (0 or 1), covering ``[0, duration_s)``."""
        d = np.asarray(self.dwell_s, float)
        state0 = int(rng.random() >= d[0] / d.sum())
        starts, states, t = [], [], 0.0
        while t < duration_s:
            m = int(2 * duration_s / d.sum()) + 16
            st = (state0 + np.arange(m)) % 2
            dw = rng.exponential(d[st])
            ends = t + np.cumsum(dw)
            starts.append(ends - dw)
            states.append(st)
            t = float(ends[-1])
            state0 = int(1 - st[-1])
        s = np.concatenate(starts)
        st = np.concatenate(states)
        keep = s < duration_s
        s, st = s[keep], st[keep]
        e = np.minimum(np.append(s[1:], duration_s), duration_s)
        return s, e, st

    def arrivals_on(self, rng, path) -> np.ndarray:
        """Poisson arrivals at this process's rates on a state path from :meth:`state_path`."""
        s, e, st = path
        r = np.asarray(self.rates, float)
        counts = rng.poisson(r[st] * (e - s))
        base = np.repeat(s, counts)
        width = np.repeat(e - s, counts)
        return np.sort(base + rng.random(base.size) * width)

    def generate(self, rng, duration_s):
        return self.arrivals_on(rng, self.state_path(rng, duration_s))


def read_trace(path) -> tuple[np.ndarray, list[str]]:
    """Read a trace CSV of ``timestamp,device`` rows (seconds, any device id).

    An optional header row ``timestamp,device``; blank lines and ``#`` comments are
    skipped. Rows are returned sorted by time (stable). Malformed rows raise
    :class:`TraceError` naming the file, line and field.
    """
    from fluidnpu.textfiles import TextFileError, read_text
    p = Path(path)
    try:
        text = read_text(p)
    except OSError as e:
        raise TraceError(f"{p}: cannot read trace ({e.strerror})") from None
    except TextFileError as e:
        raise TraceError(str(e)) from None
    times, devs = [], []
    for ln, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if ln == 1 or not times:
            if [c.strip().lower() for c in row] == ["timestamp", "device"]:
                continue
        if len(row) != 2:
            raise TraceError(f"{p}: line {ln}: has {len(row)} fields: must be 2 (timestamp, device)")
        ts, dev = row[0].strip(), row[1].strip()
        try:
            t = float(ts)
        except ValueError:
            raise TraceError(f"{p}: line {ln}: field 'timestamp' = {ts!r}: not a number (seconds)") from None
        if not math.isfinite(t) or t < 0:
            raise TraceError(f"{p}: line {ln}: field 'timestamp' = {ts!r}: must be a finite number >= 0")
        if not dev:
            raise TraceError(f"{p}: line {ln}: field 'device' is empty: must name a device")
        times.append(t)
        devs.append(dev)
    t = np.asarray(times, dtype=float)
    order = np.argsort(t, kind="stable")
    return t[order], [devs[i] for i in order]


@dataclass(frozen=True)
class TraceReplay(ArrivalProcess):
    """Replay arrival times: from a CSV trace (rows of ``device``, or all rows) or given times."""
    path: str | None = None
    device: str | None = None
    times: tuple[float, ...] | None = None
    kind = "trace"

    def __post_init__(self):
        if (self.path is None) == (self.times is None):
            raise ArrivalError("trace arrivals: give exactly one of path= or times=")
        if self.times is not None:
            ts = tuple(float(x) for x in self.times)
            for i, x in enumerate(ts):
                if not math.isfinite(x) or x < 0:
                    raise ArrivalError(f"trace arrivals: times[{i}] = {x!r}: must be a finite number >= 0")
            object.__setattr__(self, "times", tuple(sorted(ts)))
            if not ts:
                raise ArrivalError("trace arrivals: times = (): give at least one arrival time")
        else:
            self.rows()  # fail early on a malformed file, an empty one or one without this device

    def rows(self) -> np.ndarray:
        """The arrival times this process replays (sorted); a trace file without any row,
        or without a row of ``device``, is a :class:`TraceError`."""
        if self.times is not None:
            return np.asarray(self.times, dtype=float)
        t, devs = read_trace(self.path)
        if not t.size:
            raise TraceError(f"{self.path}: the trace has no rows (timestamp,device): nothing to replay")
        if self.device is None:
            return t
        keep = np.fromiter((d == self.device for d in devs), dtype=bool, count=len(devs))
        if not keep.any():
            seen = sorted(set(devs))
            raise TraceError(f"{self.path}: no row has device {self.device!r} (the trace's devices: "
                             f"{', '.join(map(repr, seen[:10]))}{' ...' if len(seen) > 10 else ''}); name the "
                             f"trace's device with arrivals.device, or fix the device column")
        return t[keep]

    @property
    def mean_rate(self) -> float:
        t = self.rows()
        return 0.0 if t.size < 2 else (t.size - 1) / max(t[-1] - t[0], 1e-12)

    def generate(self, rng, duration_s):
        t = self.rows()
        return t[t < duration_s]
