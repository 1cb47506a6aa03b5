"""Latency tables: cycles per backbone layer and exit head at every batch size.

A :class:`LatencyTable` is the only source of service times for the serving
simulator and the schedulers. The cycle model (RTL-exact, per hardware variant)
produces them; :meth:`LatencyTable.synthetic` is a clearly-named stand-in that
derives cycles from layer shapes and an array size until that model lands.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LatencyTable", "LatencyTableError", "FORMAT"]

FORMAT = "fluidnpu.latency_table"
VERSION = 1


class LatencyTableError(ValueError):
    """A latency table (or its file) breaks a rule; the message names field, value and rule."""


def _int_matrix(name: str, value, n_cols: int | None) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as e:  # pragma: no cover - numpy rarely refuses
        raise LatencyTableError(f"latency table: {name}: cannot be read as an array ({e})") from None
    if a.ndim != 2:
        raise LatencyTableError(f"latency table: {name} has shape {a.shape}: must be 2-D "
                                f"[B_max+1, n] (row b = batch size b, row 0 unused)")
    if a.size and not (np.issubdtype(a.dtype, np.integer) or
                       (np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)))):
        raise LatencyTableError(f"latency table: {name} has dtype {a.dtype}: must hold whole numbers of cycles")
    if n_cols is not None and a.shape[1] != n_cols:
        raise LatencyTableError(f"latency table: {name} has {a.shape[1]} columns: must have {n_cols}")
    return a.astype(np.int64)


@dataclass(frozen=True, eq=False)
class LatencyTable:
    """Cycles to run each backbone layer / exit head of one model for a batch of ``b``.

    ``layer_cycles[b, l]`` and ``head_cycles[b, h]`` for ``b = 1 .. b_max`` (row 0 is
    unused and kept at zero). ``head_after[h]`` is the backbone layer after which head
    ``h`` runs (as in :class:`~fluidnpu.sim.workloads.model.EEModel`).

    A head's cycles are for a batch that all stays (its exit test reads every sample's
    logits); ``exit_leave_cycles[h]`` is what each sample that *leaves* there adds (the
    FBE's exit unit writes its result: ``sim.fbe_model.exit_leave_extra``). The final
    layer's cycles already count every sample leaving.
    """
    model: str
    hardware: str
    clock_mhz: float
    layer_cycles: np.ndarray
    head_cycles: np.ndarray
    head_after: tuple[int, ...]
    preempt_cycles: int = 0          #: cost of pausing the running batch
    merge_cycles: int = 0            #: cost of merging a catch-up batch into the paused one
    peak_macs_per_cycle: int | None = None   #: for MAC utilisation; None if unknown
    source: str = ""                 #: where the numbers come from
    meta: dict = field(default_factory=dict)
    exit_leave_cycles: tuple[int, ...] = ()  #: per head: extra cycles per sample leaving there (() = none)

    def __post_init__(self):
        def bad(name, value, rule):
            raise LatencyTableError(f"latency table {self.model!r}/{self.hardware!r}: {name} = {value!r}: {rule}")

        if not isinstance(self.model, str) or not self.model:
            bad("model", self.model, "must be a non-empty string")
        if not isinstance(self.hardware, str) or not self.hardware:
            bad("hardware", self.hardware, "must be a non-empty string")
        c = self.clock_mhz
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            bad("clock_mhz", c, "must be a positive finite number of MHz")
        lc = _int_matrix("layer_cycles", self.layer_cycles, None)
        if lc.shape[0] < 2 or lc.shape[1] < 1:
            bad("layer_cycles.shape", lc.shape, "needs at least 2 rows (row 0 unused, b = 1..B_max) and 1 layer")
        hc = np.asarray(self.head_cycles)
        if hc.size == 0:
            hc = np.zeros((lc.shape[0], 0), dtype=np.int64)
        hc = _int_matrix("head_cycles", hc, None)
        if hc.shape[0] != lc.shape[0]:
            bad("head_cycles.shape", hc.shape, f"must have the same rows as layer_cycles ({lc.shape[0]})")
        ha = tuple(self.head_after)
        if len(ha) != hc.shape[1]:
            bad("head_after", ha, f"must list one layer per head ({hc.shape[1]} heads)")
        for i, a in enumerate(ha):
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not 0 <= a < lc.shape[1] - 1:
                bad(f"head_after[{i}]", a, f"must be a layer index from 0 to {lc.shape[1] - 2}")
        if list(ha) != sorted(set(ha)):
            bad("head_after", ha, "must be strictly increasing")
        for name, a in (("layer_cycles", lc), ("head_cycles", hc)):
            body = a[1:]
            if body.size and body.min() < 1:
                b, j = np.argwhere(body < 1)[0]
                bad(f"{name}[{b + 1}, {j}]", int(body[b, j]), "must be a positive number of cycles")
            a[0] = 0
            a.setflags(write=False)
        for name in ("preempt_cycles", "merge_cycles"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                bad(name, v, "must be a non-negative integer")
        el = self.exit_leave_cycles
        try:
            el = tuple(el) if len(el) else (0,) * hc.shape[1]
        except TypeError:
            el = None
        if el is None or len(el) != hc.shape[1]:
            bad("exit_leave_cycles", self.exit_leave_cycles,
                f"must list one whole number of cycles per head ({hc.shape[1]})")
        for i, v in enumerate(el):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                bad(f"exit_leave_cycles[{i}]", v, "must be a non-negative integer")
        object.__setattr__(self, "exit_leave_cycles", tuple(int(v) for v in el))
        p = self.peak_macs_per_cycle
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1):
            bad("peak_macs_per_cycle", p, "must be a positive integer or None")
        object.__setattr__(self, "layer_cycles", lc)
        object.__setattr__(self, "head_cycles", hc)
        object.__setattr__(self, "head_after", tuple(int(a) for a in ha))
        object.__setattr__(self, "clock_mhz", float(c))

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other):
        if not isinstance(other, LatencyTable):
            return NotImplemented
        return (self.model, self.hardware, self.clock_mhz, self.head_after, self.preempt_cycles,
                self.merge_cycles, self.peak_macs_per_cycle, self.exit_leave_cycles) == \
               (other.model, other.hardware, other.clock_mhz, other.head_after, other.preempt_cycles,
                other.merge_cycles, other.peak_macs_per_cycle, other.exit_leave_cycles) and \
            np.array_equal(self.layer_cycles, other.layer_cycles) and \
            np.array_equal(self.head_cycles, other.head_cycles)

    # -- shape -------------------------------------------------------------------
    @property
    def b_max(self) -> int:
        return self.layer_cycles.shape[0] - 1

    @property
    def n_layers(self) -> int:
        return self.layer_cycles.shape[1]

    @property
    def n_heads(self) -> int:
        return self.head_cycles.shape[1]

    def check_model(self, model) -> None:
        """Raise unless this table fits ``model`` (an EEModel): layers and head positions."""
        ha = tuple(e.after for e in model.exits)
        if self.n_layers != len(model.layers):
            raise LatencyTableError(f"latency table {self.model!r}/{self.hardware!r}: has {self.n_layers} layers; "
                                    f"model {model.name!r} has {len(model.layers)}")
        if self.head_after != ha:
            raise LatencyTableError(f"latency table {self.model!r}/{self.hardware!r}: head_after = {self.head_after}; "
                                    f"model {model.name!r} has exits after layers {ha}")

    # -- time --------------------------------------------------------------------
    def seconds(self, cycles) -> float | np.ndarray:
        """Cycles to seconds at ``clock_mhz``."""
        return np.asarray(cycles, dtype=float) / (self.clock_mhz * 1e6) if np.ndim(cycles) else \
            float(cycles) / (self.clock_mhz * 1e6)

    def batch1_latency_cycles(self, exit_index: int | None = None) -> int:
        """Isolated batch-1 cycles for a sample leaving at exit ``exit_index``.

        ``None`` (or ``n_heads``) means the full network: every backbone layer and every
        head on the way (a sample runs each head it passes). This is the SLO base. An
        early exit adds that head's ``exit_leave_cycles``.
        """
        nh = self.n_heads
        i = nh if exit_index is None else exit_index
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i <= nh:
            raise LatencyTableError(f"latency table {self.model!r}: exit_index = {exit_index!r}: "
                                    f"must be from 0 to {nh} (or None for the full network)")
        last = self.head_after[i] if i < nh else self.n_layers - 1
        leave = self.exit_leave_cycles[i] if i < nh else 0
        return int(self.layer_cycles[1, :last + 1].sum() + self.head_cycles[1, :min(i + 1, nh)].sum()) + leave

    def batch1_latency_s(self, exit_index: int | None = None) -> float:
        return self.seconds(self.batch1_latency_cycles(exit_index))

    # -- files -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "hardware": self.hardware,
                "clock_mhz": self.clock_mhz, "head_after": list(self.head_after),
                "batch_sizes": list(range(1, self.b_max + 1)),
                "layer_cycles": self.layer_cycles[1:].tolist(), "head_cycles": self.head_cycles[1:].tolist(),
                "preempt_cycles": int(self.preempt_cycles), "merge_cycles": int(self.merge_cycles),
                "peak_macs_per_cycle": None if self.peak_macs_per_cycle is None else int(self.peak_macs_per_cycle),
                "exit_leave_cycles": list(self.exit_leave_cycles), "source": self.source, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, where: str = "latency table") -> "LatencyTable":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LatencyTableError(f"{where}: field 'format' = {d.get('format') if isinstance(d, dict) else d!r}: "
                                    f"must be {FORMAT!r}")
        if d.get("version") != VERSION:
            raise LatencyTableError(f"{where}: field 'version' = {d.get('version')!r}: must be {VERSION}")
        for k in ("model", "hardware", "clock_mhz", "layer_cycles", "head_cycles", "head_after"):
            if k not in d:
                raise LatencyTableError(f"{where}: field {k!r} is missing")
        lc, hc = d["layer_cycles"], d["head_cycles"]
        if not isinstance(lc, list) or not lc or not isinstance(hc, list) or len(hc) != len(lc):
            raise LatencyTableError(f"{where}: fields 'layer_cycles'/'head_cycles' must be lists with one row "
                                    f"per batch size 1..B_max (got {type(lc).__name__}/{type(hc).__name__})")
        n_l = len(lc[0]) if isinstance(lc[0], list) else 0
        n_h = len(hc[0]) if isinstance(hc[0], list) else 0
        try:
            lc_a = np.array([[0] * n_l] + lc)
            hc_a = np.array([[0] * n_h] + hc).reshape(len(lc) + 1, n_h)
        except ValueError as e:
            raise LatencyTableError(f"{where}: layer_cycles/head_cycles rows differ in length ({e})") from None
        try:
            return cls(model=d["model"], hardware=d["hardware"], clock_mhz=d["clock_mhz"], layer_cycles=lc_a,
                       head_cycles=hc_a, head_after=tuple(d["head_after"]),
                       preempt_cycles=d.get("preempt_cycles", 0), merge_cycles=d.get("merge_cycles", 0),
                       peak_macs_per_cycle=d.get("peak_macs_per_cycle"), source=d.get("source", ""),
                       meta=d.get("meta") or {}, exit_leave_cycles=d.get("exit_leave_cycles") or ())
        except LatencyTableError as e:
            raise LatencyTableError(f"{where}: {e}") from None

    def save(self, path) -> None:
        from fluidnpu.outputs import atomic_write
        atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path) -> "LatencyTable":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise LatencyTableError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
        return cls.from_dict(d, where=str(p))

    # -- construction helpers ----------------------------------------------------
    @classmethod
    def for_model(cls, model, hardware: str, clock_mhz: float, layer_cycles, head_cycles=None, **kw):
        """A table for ``model`` (an EEModel): fills the name and head positions."""
        if head_cycles is None:
            head_cycles = np.zeros((np.asarray(layer_cycles).shape[0], 0), dtype=np.int64)
        t = cls(model=model.name, hardware=hardware, clock_mhz=clock_mhz, layer_cycles=layer_cycles,
                head_cycles=head_cycles, head_after=tuple(e.after for e in model.exits), **kw)
        t.check_model(model)
        return t

    @classmethod
    def synthetic(cls, model, variant: str = "rbatch", b_max: int = 16, tc: int = 64, tp: int = 32,
                  bw_bytes_per_cycle: int = 32, bytes_per_elem: int = 1, overhead_cycles: int = 64,
                  clock_mhz: float = 200.0, preempt_cycles: int = 32, merge_cycles: int = 16) -> "LatencyTable":
        """STAND-IN for tests and analysis until the RTL-exact cycle model lands.

        Derives cycles from each layer's GEMM shape (r, p, c) on a ``tc`` x ``tp`` array
        (``tc*tp`` MACs per cycle): a layer takes ``max(compute, weight load) + overhead``
        cycles, where the weight load is ``p*c*bytes / bw`` (paid once per layer, so
        small batches are memory bound and under-use the array) and compute is
        ``ceil(R/B_P) * ceil(c/(tc/k)) * ceil(p/(k*tp/B_P))`` for ``R = b*r``.
        ``variant="rbatch"`` fixes ``B_P = k = 1``; ``variant="fluid"`` takes, per
        (b, layer), the best power-of-two ``B_P <= tp`` and ``k <= tc`` (stackable PEs
        fill the array on layers with few output channels or a short reduction).
        These are modelled numbers, not measurements.
        """
        if variant not in ("rbatch", "fluid"):
            raise LatencyTableError(f"synthetic latency table: variant = {variant!r}: must be 'rbatch' or 'fluid'")
        for name, v in (("b_max", b_max), ("tc", tc), ("tp", tp), ("bw_bytes_per_cycle", bw_bytes_per_cycle),
                        ("bytes_per_elem", bytes_per_elem)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LatencyTableError(f"synthetic latency table: {name} = {v!r}: must be a positive integer")
        pows = lambda n: [1 << i for i in range(n.bit_length()) if (1 << i) <= n]  # noqa: E731
        policies = [(1, 1)] if variant == "rbatch" else [(bp, k) for bp in pows(tp) for k in pows(tc)]

        def cycles(layer, b):
            R = b * layer.r
            comp = min(-(-R // bp) * -(-layer.c // (tc // k)) * -(-layer.p // max(1, k * tp // bp))
                       for bp, k in policies)
            wload = -(-(layer.p * layer.c * bytes_per_elem) // bw_bytes_per_cycle)
            return max(comp, wload) + overhead_cycles

        lc = np.zeros((b_max + 1, len(model.layers)), dtype=np.int64)
        hc = np.zeros((b_max + 1, len(model.exits)), dtype=np.int64)
        for b in range(1, b_max + 1):
            lc[b] = [cycles(L, b) for L in model.layers]
            hc[b] = [sum(cycles(L, b) for L in e.layers) or max(1, overhead_cycles) for e in model.exits]
        return cls.for_model(model, hardware=variant, clock_mhz=clock_mhz, layer_cycles=lc, head_cycles=hc,
                             preempt_cycles=preempt_cycles, merge_cycles=merge_cycles,
                             peak_macs_per_cycle=tc * tp,
                             source=f"synthetic stand-in: tc={tc} tp={tp} bw={bw_bytes_per_cycle}B/cycle "
                                    f"overhead={overhead_cycles}")
