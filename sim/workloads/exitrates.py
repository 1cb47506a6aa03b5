"""Exit-rate families: unconditional shares from probabilities, conditional rates,
a geometric law or measured per-exit counts.

All functions return ``q``: the unconditional share of samples leaving at each exit
(early heads in order, then the final exit), non-negative and summing to 1 — the
``EEModel.exit_probs`` convention.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import WorkloadError

__all__ = ["check_probs", "geometric", "from_conditional", "to_conditional", "from_counts", "read_counts"]

TOL = 1e-6
_INT = re.compile(r"[+-]?\d+\Z")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_probs(probs, n_exits: int, *, source="<value>", key="probs") -> tuple[float, ...]:
    """Validate unconditional shares: one per exit (incl. final), >= 0, sum 1 (+-1e-6)."""
    probs = list(probs) if isinstance(probs, (list, tuple)) else probs
    if not isinstance(probs, list) or len(probs) != n_exits:
        raise WorkloadError.at(source, key, probs, f"must be a list of {n_exits} shares "
                               f"(one per early exit plus the final exit)")
    for i, q in enumerate(probs):
        if not _num(q) or q < 0:
            raise WorkloadError.at(source, f"{key}[{i}]", q, "must be a number >= 0")
    total = math.fsum(probs)
    if abs(total - 1.0) > TOL:
        raise WorkloadError.at(source, key, probs, f"must sum to 1 (sum is {total!r})")
    return tuple(float(q) for q in probs)


def geometric(n_exits: int, p: float, *, source="<value>", key="geometric") -> tuple[float, ...]:
    """``q_i`` proportional to ``p**i`` for ``i = 0 .. n_exits-1`` (the last is the final exit).

    ``p < 1`` favours early exits, ``p = 1`` is uniform, ``p > 1`` favours late ones.
    """
    if not _num(p) or p <= 0:
        raise WorkloadError.at(source, key, p, "must be a number > 0")
    if not isinstance(n_exits, int) or n_exits < 1:
        raise WorkloadError.at(source, "n_exits", n_exits, "must be a positive integer")
    # Normalise by the largest term so that extreme p cannot overflow.
    logs = [i * math.log(p) for i in range(n_exits)]
    top = max(logs)
    w = [math.exp(v - top) for v in logs]
    s = math.fsum(w)
    return tuple(x / s for x in w)


def from_conditional(rates, n_exits: int, *, source="<value>", key="conditional") -> tuple[float, ...]:
    """Unconditional shares from per-head conditional exit rates.

    ``rates[i]`` is P(leave at head i | reached head i) for the ``n_exits - 1`` early
    heads; a trailing entry for the final exit may be given and must then be 1.
    """
    rates = list(rates) if isinstance(rates, (list, tuple)) else rates
    if not isinstance(rates, list) or len(rates) not in (n_exits - 1, n_exits):
        raise WorkloadError.at(source, key, rates, f"must be a list of {n_exits - 1} rates, one per early "
                               f"exit (optionally followed by 1.0 for the final exit)")
    for i, c in enumerate(rates):
        if not _num(c) or not 0 <= c <= 1:
            raise WorkloadError.at(source, f"{key}[{i}]", c, "must be a number from 0 to 1")
    if len(rates) == n_exits and rates[-1] != 1:
        raise WorkloadError.at(source, f"{key}[{n_exits - 1}]", rates[-1],
                               "the final exit takes every remaining sample: must be 1")
    q, alive = [], 1.0
    for c in rates[:n_exits - 1]:
        q.append(alive * c)
        alive *= 1.0 - c
    q.append(alive)
    s = math.fsum(q)
    return tuple(x / s for x in q)


def to_conditional(probs) -> tuple[float, ...]:
    """Inverse of :func:`from_conditional` (final entry is 1)."""
    out, rest = [], math.fsum(probs)
    for q in probs:
        out.append(1.0 if rest <= 0 else min(1.0, q / rest))
        rest -= q
    out[-1] = 1.0
    return tuple(out)


def from_counts(counts, n_exits: int | None = None, *, source="<value>", key="counts") -> tuple[float, ...]:
    """Shares from per-exit sample counts (the measured way)."""
    counts = list(counts) if isinstance(counts, (list, tuple)) else counts
    if not isinstance(counts, list) or (n_exits is not None and len(counts) != n_exits):
        need = f"{n_exits} counts (one per early exit plus the final exit)" if n_exits else "a list of counts"
        raise WorkloadError.at(source, key, counts, f"must be {need}")
    for i, c in enumerate(counts):
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise WorkloadError.at(source, f"{key}[{i}]", c, "must be an integer count >= 0")
    total = sum(counts)
    if total <= 0:
        raise WorkloadError.at(source, key, counts, "must have at least one sample (sum > 0)")
    return tuple(c / total for c in counts)


def read_counts(path, n_exits: int) -> tuple[tuple[int, ...], str]:
    """Read per-exit counts from a JSON or CSV file; returns (counts, source text).

    JSON: ``[812, 143, 45]`` or ``{"counts": [...], "source": "..."}``.
    CSV: one row per exit, ``exit,count`` (exit = 0-based index or ``final``) or just
    ``count`` in exit order; an optional header row and ``#`` comments.
    """
    from fluidnpu.textfiles import TextFileError, read_text
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read exit counts: {e.strerror or e}", file=path) from None
    except TextFileError as e:
        raise WorkloadError(str(e), file=path) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path}:{e.lineno}: not valid JSON: {e.msg}", file=path, line=e.lineno) from None
        src = ""
        if isinstance(data, dict):
            unknown = set(data) - {"counts", "source"}
            if unknown or "counts" not in data:
                raise WorkloadError.at(path, "keys", sorted(data), "must have 'counts' (and optionally 'source')")
            src, data = str(data.get("source", "")), data["counts"]
        from_counts(data, n_exits, source=path)
        return tuple(data), src
    slots: list[int | None] = [None] * n_exits
    seq = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split(",")]
        while cells and cells[-1] == "":
            cells.pop()
        if not any(_INT.match(c) for c in cells):
            continue      # header row, e.g. "exit,count"
        if len(cells) not in (1, 2):
            raise WorkloadError.at(path, "columns", len(cells), "a row is 'exit,count' or 'count'", line=lineno)
        if len(cells) == 2:
            e = cells[0].lower()
            idx = n_exits - 1 if e == "final" else int(e) if _INT.match(e) else -1
            if not 0 <= idx < n_exits:
                raise WorkloadError.at(path, "exit", cells[0], f"must be 0 .. {n_exits - 1} or 'final'", line=lineno)
        else:
            idx, seq = seq, seq + 1
            if idx >= n_exits:
                raise WorkloadError.at(path, "rows", idx + 1, f"more rows than the model's {n_exits} exits",
                                       line=lineno)
        if slots[idx] is not None:
            raise WorkloadError.at(path, "exit", idx, "given twice", line=lineno)
        c = cells[-1]
        if not _INT.match(c) or int(c) < 0:
            raise WorkloadError.at(path, "count", c, "must be an integer >= 0", line=lineno)
        slots[idx] = int(c)
    missing = [i for i, c in enumerate(slots) if c is None]
    if missing:
        raise WorkloadError.at(path, "exits", missing, f"have no count; the model has {n_exits} exits")
    from_counts(slots, n_exits, source=path)
    return tuple(slots), ""
