"""The figures ``fluidnpu compare`` keeps of one run: latency, per-model tails, the SLO sweep.

Per model (each device's *own* SLO, ``Scenario.devices[i].slo_ms`` or ``slo_mult``):
p99 latency of the served requests and SLO attainment (a dropped request misses).
The SLO sweep is the violation rate when every request's budget is ``m`` times its
model's isolated batch-1 latency on the reference (``rbatch``) hardware, for each
multiplier ``m`` (as in the PREMA and Dysta evaluations). Only measured requests
(outside the warm-up) count.
"""
from __future__ import annotations

import numpy as np

from .result import Result

__all__ = ["run_metrics", "CDF_POINTS"]

CDF_POINTS = 101


def _quantiles(a: np.ndarray, q) -> np.ndarray:
    """Quantiles of a *sorted* array, interpolated linearly as numpy's default method does."""
    pos = np.asarray(q, dtype=float) * (a.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, a.size - 1)
    return a[lo] + (a[hi] - a[lo]) * (pos - lo)


_CDF_Q = np.linspace(0, 1, CDF_POINTS)


def run_metrics(res: Result, sweep_mults) -> dict:
    """A JSON-ready dict of one run's figures (see the module docstring)."""
    sel = res.measured
    fin = res.finish[sel]
    lat = fin - res.arrival[sel]
    done = ~np.isnan(fin)
    n = int(sel.sum())
    model = res.model[sel]
    met = lat <= res.slo_s[sel] * (1 + 1e-12)                # NaN (dropped) compares False: a miss
    served = np.sort(lat[done])
    if served.size:
        p50, p95, p99 = (float(v) for v in _quantiles(served, (0.5, 0.95, 0.99)) * 1e3)
        mean = float(served.mean() * 1e3)
        cdf = (_quantiles(served, _CDF_Q) * 1e3).tolist()
    else:
        p50 = p95 = p99 = mean = float("nan")
        cdf = [float("nan")] * CDF_POINTS
    mults = np.asarray(sweep_mults, dtype=float) * (1 + 1e-12)
    per_model = {}
    for mi, name in enumerate(res.models):
        k = model == mi
        nm = int(k.sum())
        if not nm:
            continue
        ok = np.sort(lat[k & done])
        # violation at m: the request is dropped, or its latency exceeds m x its model's batch-1 latency
        within = np.searchsorted(ok / res.slo_base_s[mi], mults, side="right")
        per_model[name] = {"requests": nm, "mean_ms": float(ok.mean() * 1e3) if ok.size else float("nan"),
                           "p99_ms": float(_quantiles(ok, (0.99,))[0] * 1e3) if ok.size else float("nan"),
                           "attainment": float(met[k].sum() / nm),
                           "violation_at": (1.0 - within / nm).tolist()}
    span = res.t_end - res.t_warm
    ops = res.op_hist
    return {"hardware": res.hardware, "requests": n, "dropped": int(n - done.sum()),
            "mean_ms": mean, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
            "attainment_req": float(met.sum() / n) if n else float("nan"),
            "per_model": per_model,
            "throughput_rps": float(done.sum() / span) if span > 0 else float("nan"),
            "utilisation": res.busy_s / span if span > 0 else float("nan"),
            "preemptions": res.preemptions, "merges": res.merges,
            "mean_batch_size": float((ops * np.arange(ops.size)).sum() / max(1, ops.sum())),
            "cdf_ms": cdf}
