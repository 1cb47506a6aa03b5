"""Model TOML files: load an EEModel (backbone, exit heads, exit rates) and write one back.

The format is documented in docs/models.md. Paths inside a file (topology CSVs,
measured counts) are relative to that file. Every error is a WorkloadError naming
the file, the key and the value.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

from . import exitrates
from .errors import WorkloadError
from .model import EXIT_CRITERIA, EEModel, ExitHead, GemmLayer
from .topology import parse_topology

__all__ = ["load_model", "model_from_dict", "model_to_toml", "save_model", "HEAD_SHORTHANDS",
           "THRESHOLD_RANGE"]

HEAD_SHORTHANDS = ("pool-fc",)
_TOP = {"model", "layer_params", "exits", "exit_rates", "meta"}
_MODEL = {"name", "description", "topology", "layers", "num_classes", "dataset", "input", "weights"}
_EXIT = {"name", "after", "head", "topology", "layers", "num_classes", "layer_params", "threshold",
         "criterion"}
#: exit thresholds are compared with 32-bit logits
THRESHOLD_RANGE = (-(1 << 31), (1 << 31) - 1)
_RATES = ("probs", "conditional", "geometric", "measured")
_LAYER = {"name", "r", "p", "c", "m", "n", "k", "kind", "relu", "mult", "shift", "groups"}
_PARAMS = {"relu", "mult", "shift"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Ctx:
    """Where we are: the file (for messages) and its folder (for relative paths)."""

    def __init__(self, source, base_dir):
        self.source = source
        self.base = Path(base_dir)

    def err(self, key, value, problem):
        return WorkloadError.at(self.source, key, value, problem)

    def table(self, obj, key, allowed):
        if not isinstance(obj, dict):
            raise self.err(key, obj, "must be a table")
        unknown = sorted(set(obj) - set(allowed))
        if unknown:
            raise self.err(f"{key}.{unknown[0]}" if key else unknown[0], obj[unknown[0]],
                           f"unknown key; allowed: {', '.join(sorted(allowed))}")
        return obj

    def path(self, key, value):
        if not isinstance(value, str) or not value:
            raise self.err(key, value, "must be a file path (relative to the model file)")
        p = self.base / value
        if not p.is_file():
            raise self.err(key, value, f"no such file ({p})")
        return p

    def topology(self, key, value):
        try:
            return parse_topology(self.path(key, value))
        except WorkloadError as e:   # keep the CSV's file/line/field, add where it was referenced
            raise WorkloadError(f"{self.source}: {key} = {value!r}: {e}", file=e.file, line=e.line,
                                field=e.field, value=e.value) from e


def _layer(ctx: _Ctx, d, key) -> GemmLayer:
    ctx.table(d, key, _LAYER)
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.err(f"{key}.name", name, "must be a non-empty string")
    has_rpc, has_mnk = any(k in d for k in "rpc"), any(k in d for k in "mnk")
    if has_rpc == has_mnk or not all(k in d for k in ("rpc" if has_rpc else "mnk")):
        raise ctx.err(key, name, "give the shape as r, p, c (per-sample GEMM) or as m, n, k "
                      "(SCALE-Sim GEMM: r = m, p = k, c = n), all three")
    dims = {k: d[k] for k in "rpc"} if has_rpc else {"r": d["m"], "p": d["k"], "c": d["n"]}
    for k, v in list(dims.items()) + [("groups", d.get("groups", 1))]:
        if not _is_int(v) or v < 1:
            src = k if has_rpc or k == "groups" else {"r": "m", "p": "k", "c": "n"}[k]
            raise ctx.err(f"{key}.{src}", d.get(src, v), "must be a positive integer")
    kind = d.get("kind", "gemm")
    if kind not in ("gemm", "conv"):
        raise ctx.err(f"{key}.kind", kind, "must be 'gemm' or 'conv'")
    params = _params(ctx, {k: d[k] for k in _PARAMS if k in d}, key)
    try:
        return GemmLayer(name, kind=kind, groups=d.get("groups", 1), **dims, **params)
    except ValueError as e:
        raise ctx.err(key, name, str(e)) from None


def _params(ctx: _Ctx, d, key) -> dict:
    ctx.table(d, key, _PARAMS)
    if "relu" in d and not isinstance(d["relu"], bool):
        raise ctx.err(f"{key}.relu", d["relu"], "must be true or false")
    if "mult" in d and not _is_int(d["mult"]):
        raise ctx.err(f"{key}.mult", d["mult"], "must be an integer (the requantisation multiplier)")
    if "shift" in d and (not _is_int(d["shift"]) or d["shift"] < 0):
        raise ctx.err(f"{key}.shift", d["shift"], "must be an integer >= 0")
    if "shift" in d and "mult" not in d:
        raise ctx.err(f"{key}.shift", d["shift"], "needs mult as well")
    return dict(d)


def _apply_params(ctx: _Ctx, layers, table, key):
    if table is None:
        return tuple(layers)
    if not isinstance(table, dict):
        raise ctx.err(key, table, "must be a table of {relu, mult, shift} per layer name or \"*\"")
    names = {l.name for l in layers}
    for k in table:
        if k != "*" and k not in names:
            raise ctx.err(f"{key}.{k}", table[k], "no layer has this name; use a layer name or \"*\" for all")
    common = _params(ctx, table.get("*", {}), f"{key}.\"*\"")
    out = []
    for l in layers:
        own = _params(ctx, table.get(l.name, {}), f"{key}.{l.name}")
        p = {**common, **own}
        if "shift" in p and "mult" not in p and l.mult is None:
            raise ctx.err(f"{key}.{l.name}.shift", p["shift"], "needs mult as well")
        out.append(dataclasses.replace(l, **p) if p else l)
    return tuple(out)


def _layers(ctx: _Ctx, tbl, key, required=True) -> tuple[GemmLayer, ...] | None:
    """Layers from ``topology = "x.csv"`` or ``layers = [...]`` in ``tbl``."""
    if "topology" in tbl and "layers" in tbl:
        raise ctx.err(f"{key}.layers", "...", "give either topology or layers, not both")
    if "topology" in tbl:
        return ctx.topology(f"{key}.topology", tbl["topology"])
    if "layers" in tbl:
        ls = tbl["layers"]
        if not isinstance(ls, list) or not ls:
            raise ctx.err(f"{key}.layers", ls, "must be a non-empty list of layer tables")
        return tuple(_layer(ctx, d, f"{key}.layers[{i}]") for i, d in enumerate(ls))
    if required:
        raise ctx.err(key, "", "needs topology = \"file.csv\" or layers = [...]")
    return None


def _num_classes(ctx, v, key):
    if not _is_int(v) or v < 1:
        raise ctx.err(key, v, "must be a positive integer")
    return v


def _exit(ctx: _Ctx, i, d, backbone, model_classes):
    key = f"exits[{i}]"
    ctx.table(d, key, _EXIT)
    name = d.get("name", f"exit{i}")
    if not isinstance(name, str) or not name:
        raise ctx.err(f"{key}.name", name, "must be a non-empty string")
    if "after" not in d:
        raise ctx.err(f"{key}.after", None, "missing: give a backbone layer name or 0-based index")
    a = d["after"]
    last = len(backbone) - 2
    if isinstance(a, str):
        idx = next((j for j, l in enumerate(backbone) if l.name == a), None)
        if idx is None:
            near = ", ".join(l.name for l in backbone[:8]) + (", ..." if len(backbone) > 8 else "")
            raise ctx.err(f"{key}.after", a, f"no backbone layer has this name (layers: {near})")
    elif _is_int(a):
        idx = a
    else:
        raise ctx.err(f"{key}.after", a, "must be a layer name or a 0-based layer index")
    if not 0 <= idx <= last:
        raise ctx.err(f"{key}.after", a, f"must be a layer from index 0 to {last} (the last backbone "
                      f"layer, {backbone[-1].name!r}, is the final exit)")
    forms = [k for k in ("head", "topology", "layers") if k in d]
    if len(forms) != 1:
        raise ctx.err(key, name, "give exactly one of head = \"pool-fc\", topology = \"head.csv\" "
                      "or layers = [...]")
    if "head" in d:
        if d["head"] not in HEAD_SHORTHANDS:
            raise ctx.err(f"{key}.head", d["head"], f"unknown shorthand; allowed: {', '.join(HEAD_SHORTHANDS)}")
        nc = d.get("num_classes", model_classes)
        if nc is None:
            raise ctx.err(f"{key}.num_classes", None, "pool-fc needs num_classes (here or in [model])")
        nc = _num_classes(ctx, nc, f"{key}.num_classes")
        layers = (GemmLayer(f"{name}.fc", r=1, p=backbone[idx].c, c=nc, kind="gemm"),)
    else:
        layers = _layers(ctx, d, key)
    layers = _apply_params(ctx, layers, d.get("layer_params"), f"{key}.layer_params")
    threshold, criterion = _exit_test(ctx, d, key)
    return name, ExitHead(after=idx, layers=layers, threshold=threshold, criterion=criterion)


def _exit_test(ctx: _Ctx, d, key):
    """``threshold`` and ``criterion`` of an exit (both None when not given)."""
    if "criterion" in d:
        c = d["criterion"]
        if c not in EXIT_CRITERIA:
            raise ctx.err(f"{key}.criterion", c, f"unknown exit criterion; allowed: {', '.join(EXIT_CRITERIA)}")
        if "threshold" not in d:
            raise ctx.err(f"{key}.criterion", c, "needs threshold as well")
    if "threshold" not in d:
        return None, None
    t, crit = d["threshold"], d.get("criterion", "margin")
    lo, hi = THRESHOLD_RANGE
    if not _is_int(t) or not lo <= t <= hi:
        raise ctx.err(f"{key}.threshold", t, f"must be an integer from {lo} to {hi} (in the head's "
                      f"integer logit units)")
    if crit == "margin" and t < 0:
        raise ctx.err(f"{key}.threshold", t, "must be >= 0 for criterion 'margin' (top1 - top2 is never "
                      "negative); allowed: 0 to " f"{hi}")
    return t, crit


def _rates(ctx: _Ctx, d, n_exits):
    if d is None:
        if n_exits == 1:
            return (1.0,), "", {"probs": [1.0]}
        raise ctx.err("exit_rates", None, f"missing: the model has {n_exits} exits; give one of "
                      f"{', '.join(_RATES)}")
    ctx.table(d, "exit_rates", set(_RATES) | {"source"})
    forms = [k for k in _RATES if k in d]
    if len(forms) != 1:
        raise ctx.err("exit_rates", sorted(forms), f"give exactly one of {', '.join(_RATES)}")
    form = forms[0]
    v, key = d[form], f"exit_rates.{form}"
    src = d.get("source", "")
    if not isinstance(src, str):
        raise ctx.err("exit_rates.source", src, "must be a string")
    if form == "probs":
        q = exitrates.check_probs(v, n_exits, source=ctx.source, key=key)
    elif form == "conditional":
        q = exitrates.from_conditional(v, n_exits, source=ctx.source, key=key)
    elif form == "geometric":
        q = exitrates.geometric(n_exits, v, source=ctx.source, key=key)
    else:
        counts, file_src = exitrates.read_counts(ctx.path(key, v), n_exits)
        q = exitrates.from_counts(list(counts), n_exits, source=ctx.source, key=key)
        src = src or file_src or f"measured counts {list(counts)} from {v}"
    return q, src, {k: d[k] for k in d}


def model_from_dict(data: dict, *, base_dir=".", source="<dict>") -> EEModel:
    """Build an EEModel from parsed TOML data; relative paths resolve against ``base_dir``."""
    ctx = _Ctx(source, base_dir)
    ctx.table(data, "", _TOP)
    if "model" not in data:
        raise ctx.err("model", None, "missing: the file needs a [model] table")
    m = ctx.table(data["model"], "model", _MODEL)
    name = m.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.err("model.name", name, "must be a non-empty string")
    for k in ("description", "dataset"):
        if k in m and not isinstance(m[k], str):
            raise ctx.err(f"model.{k}", m[k], "must be a string")
    classes = _num_classes(ctx, m["num_classes"], "model.num_classes") if "num_classes" in m else None
    backbone = _layers(ctx, m, "model")
    seen = {}
    for j, l in enumerate(backbone):
        if l.name in seen:
            raise ctx.err("model.layers", l.name, f"layer name used twice (layers {seen[l.name]} and {j})")
        seen[l.name] = j
    if len(backbone) < 1:
        raise ctx.err("model.layers", [], "needs at least one layer")
    backbone = _apply_params(ctx, backbone, data.get("layer_params"), "layer_params")
    weights = None
    if "weights" in m:
        weights = ctx.path("model.weights", m["weights"])
        if weights.suffix.lower() != ".npz":
            raise ctx.err("model.weights", m["weights"], "must be a numpy .npz file (allowed suffix: .npz)")
    exits_raw = data.get("exits", [])
    if not isinstance(exits_raw, list):
        raise ctx.err("exits", exits_raw, "must be an array of tables ([[exits]])")
    named = [_exit(ctx, i, d, backbone, classes) for i, d in enumerate(exits_raw)]
    for i in range(1, len(named)):
        if named[i][1].after <= named[i - 1][1].after:
            raise ctx.err(f"exits[{i}].after", exits_raw[i]["after"],
                          f"exits must be listed in backbone order, each after a later layer than "
                          f"exits[{i - 1}] (layer {named[i - 1][1].after})")
    probs, src, spec = _rates(ctx, data.get("exit_rates"), len(named) + 1)
    meta = {"path": None if source == "<dict>" else str(source), "exit_names": [n for n, _ in named],
            "exit_rates": spec, "num_classes": classes,
            **{k: m[k] for k in ("description", "dataset", "input") if k in m}}
    if weights is not None:
        meta["weights"] = str(weights)
    if "meta" in data:
        if not isinstance(data["meta"], dict):
            raise ctx.err("meta", data["meta"], "must be a table")
        meta["extra"] = data["meta"]
    try:
        return EEModel(name, backbone, tuple(h for _, h in named), probs, source=src, meta=meta)
    except ValueError as e:
        raise ctx.err("model", name, str(e)) from None


def load_model(path) -> EEModel:
    """Load a model TOML file (format: docs/models.md)."""
    from fluidnpu.textfiles import TextFileError, read_text
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read model file: {e.strerror or e}", file=path) from None
    except TextFileError as e:
        raise WorkloadError(str(e), file=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(f"{path}: not valid TOML: {e}", file=path) from None
    return model_from_dict(data, base_dir=path.parent, source=path)


# ---------------------------------------------------------------------------- writer

def _s(v) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(v, ensure_ascii=False)


def _layer_toml(l: GemmLayer) -> str:
    parts = [f"name = {_s(l.name)}", f"r = {l.r}", f"p = {l.p}", f"c = {l.c}"]
    if l.kind != "gemm":
        parts.append(f"kind = {_s(l.kind)}")
    if l.groups != 1:
        parts.append(f"groups = {l.groups}")
    if l.relu:
        parts.append("relu = true")
    if l.mult is not None:
        parts.append(f"mult = {l.mult}")
    if l.shift is not None:
        parts.append(f"shift = {l.shift}")
    return "  { " + ", ".join(parts) + " },"


def model_to_toml(model: EEModel) -> str:
    """A self-contained TOML text (inline layers, explicit probs) that loads back equal."""
    meta = model.meta or {}
    out = ["# written by fluidnpu.sim.workloads.model_to_toml", "[model]", f"name = {_s(model.name)}"]
    for k in ("description", "dataset"):
        if isinstance(meta.get(k), str):
            out.append(f"{k} = {_s(meta[k])}")
    if _is_int(meta.get("num_classes")):
        out.append(f"num_classes = {meta['num_classes']}")
    if isinstance(meta.get("weights"), str):     # absolute, so that the text loads from anywhere
        out.append(f"weights = {_s(str(Path(meta['weights']).resolve()))}")
    out += ["layers = ["] + [_layer_toml(l) for l in model.layers] + ["]"]
    names = meta.get("exit_names") or []
    for i, e in enumerate(model.exits):
        nm = names[i] if i < len(names) and isinstance(names[i], str) else f"exit{i}"
        out += ["", "[[exits]]", f"name = {_s(nm)}", f"after = {_s(model.layers[e.after].name)}",
                "layers = ["] + [_layer_toml(l) for l in e.layers] + ["]"]
        if e.threshold is not None:
            out += [f"threshold = {e.threshold}", f"criterion = {_s(e.criterion or 'margin')}"]
    out += ["", "[exit_rates]", "probs = [" + ", ".join(repr(float(q)) for q in model.exit_probs) + "]"]
    if model.source:
        out.append(f"source = {_s(model.source)}")
    return "\n".join(out) + "\n"


def save_model(model: EEModel, path) -> None:
    """Write :func:`model_to_toml` to ``path`` (whole or not at all)."""
    from fluidnpu.outputs import atomic_write
    atomic_write(path, model_to_toml(model))
