"""Run results and metrics: latency percentiles, SLO attainment, throughput, utilisation, histograms."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Result", "latency_stats"]


def latency_stats(lat_s: np.ndarray) -> dict:
    """Mean and p50/p95/p99 in milliseconds (NaN when empty)."""
    if lat_s.size == 0:
        return {"mean_ms": float("nan"), "p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(lat_s, [50, 95, 99]) * 1e3
    return {"mean_ms": float(lat_s.mean() * 1e3), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


@dataclass
class Result:
    """Everything one run produced. Per-request arrays are indexed by request id (arrival order).

    ``finish``/``start`` are NaN for dropped requests; ``drop_reason`` is "" for served
    ones. ``measured`` marks requests outside the warm-up. Utilisation and histograms
    cover the time after the warm-up (``t_warm``) to the end of the run (``t_end``).
    """
    scheduler: str
    knobs: dict
    hardware: str
    seed: int
    devices: list[str]
    models: list[str]
    n_heads: list[int]
    arrival: np.ndarray
    start: np.ndarray
    finish: np.ndarray
    exit: np.ndarray          #: exit taken (-1 if dropped)
    device: np.ndarray
    model: np.ndarray
    slo_s: np.ndarray
    drop_reason: np.ndarray   #: object array of str
    measured: np.ndarray
    slo_base_s: list[float]   #: per model: isolated batch-1 latency used for SLO multipliers
    slo_mults: tuple[float, ...]
    t_warm: float
    t_end: float
    busy_s: float
    mac_util: float | None
    preemptions: int
    merges: int
    op_hist: np.ndarray       #: ops run at each batch size (index = size)
    start_hist: np.ndarray    #: batches started at each size
    op_log: list = field(default_factory=list, repr=False)

    @property
    def latency_s(self) -> np.ndarray:
        return self.finish - self.arrival

    @property
    def done(self) -> np.ndarray:
        return ~np.isnan(self.finish)

    @property
    def slo_met(self) -> np.ndarray:
        return self.done & (self.finish - self.arrival <= self.slo_s * (1 + 1e-12))

    def _stats(self, sel: np.ndarray) -> dict:
        fin = self.finish[sel]
        lat_all = fin - self.arrival[sel]
        done = ~np.isnan(fin)
        lat = lat_all[done]
        n = int(done.size)
        out = {"requests": n, "served": int(done.sum()), "dropped": int(n - done.sum())}
        out.update(latency_stats(lat))
        out["slo_attainment"] = float((lat_all <= self.slo_s[sel] * (1 + 1e-12)).sum() / n) if n else float("nan")
        model = self.model[sel]
        base = np.asarray(self.slo_base_s)[model] * (1 + 1e-12)
        out["slo_attainment_at"] = {m: float((lat_all <= m * base).sum() / n) if n else float("nan")
                                    for m in self.slo_mults}
        span = self.t_end - self.t_warm
        out["throughput_rps"] = float(done.sum() / span) if span > 0 else float("nan")
        ex = self.exit[sel]
        exits = {}
        for mi, name in enumerate(self.models):
            exits[name] = np.bincount(ex[done & (model == mi)], minlength=self.n_heads[mi] + 1).tolist()
        out["exits_per_head"] = exits
        reasons = self.drop_reason[sel][~done]
        out["drop_reasons"] = {str(r): int(c) for r, c in zip(*np.unique(reasons.astype(str), return_counts=True))} \
            if reasons.size else {}
        return out

    def summary(self) -> dict:
        """Overall metrics over the measured requests."""
        s = self._stats(self.measured)
        span = self.t_end - self.t_warm
        s.update({"scheduler": self.scheduler, "hardware": self.hardware, "seed": self.seed,
                  "utilisation": self.busy_s / span if span > 0 else float("nan"),
                  "mac_utilisation": self.mac_util, "preemptions": self.preemptions, "merges": self.merges,
                  "batch_size_hist": self.op_hist.tolist(), "batch_start_hist": self.start_hist.tolist(),
                  "mean_batch_size": float((self.op_hist * np.arange(self.op_hist.size)).sum() /
                                           max(1, self.op_hist.sum()))})
        return s

    def per_device(self) -> dict[str, dict]:
        """Metrics per device (measured requests only)."""
        return {name: self._stats(self.measured & (self.device == i)) for i, name in enumerate(self.devices)}

    def to_csv(self, path) -> None:
        """One row per request: arrival, start, finish, latency, exit, device, model, SLO, slo_met, drop reason."""
        lat = self.latency_s
        met = self.slo_met
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["request", "device", "model", "arrival_s", "start_s", "finish_s", "latency_ms", "exit",
                        "slo_ms", "slo_met", "dropped_reason", "measured"])
            for i in range(self.arrival.size):
                w.writerow([i, self.devices[self.device[i]], self.models[self.model[i]], repr(float(self.arrival[i])),
                            "" if np.isnan(self.start[i]) else repr(float(self.start[i])),
                            "" if np.isnan(self.finish[i]) else repr(float(self.finish[i])),
                            "" if np.isnan(lat[i]) else f"{lat[i] * 1e3:.6f}",
                            int(self.exit[i]) if self.exit[i] >= 0 else "", f"{self.slo_s[i] * 1e3:.6f}",
                            int(met[i]), self.drop_reason[i], int(self.measured[i])])

    def format(self) -> str:
        """A short human-readable summary."""
        s = self.summary()
        att = " ".join(f"{m:g}x:{v:.3f}" for m, v in s["slo_attainment_at"].items())
        return (f"{self.scheduler:>8} on {self.hardware:<7} n={s['requests']} mean={s['mean_ms']:.3f}ms "
                f"p50={s['p50_ms']:.3f} p95={s['p95_ms']:.3f} p99={s['p99_ms']:.3f} slo={s['slo_attainment']:.3f} "
                f"[{att}] util={s['utilisation']:.3f} bs={s['mean_batch_size']:.2f} "
                f"pre={s['preemptions']} drop={s['dropped']}")
