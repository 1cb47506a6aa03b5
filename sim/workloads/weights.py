"""Networks with real weights: a model TOML with ``[model] weights = "x.npz"`` and exit
thresholds, loaded together for the integer reference and the hardware network runner.

The weights file (docs/models.md, "Weights and exit tests") is a numpy ``.npz`` with,
for every backbone layer ``L``, ``"L:w"`` (integer, shape ``(p, c)``, in the int8
operand range) and optionally ``"L:b"`` (integer, shape ``(c,)``, int32 range); for
every layer ``H`` of exit head ``E``, ``"E.H:w"`` and ``"E.H:b"`` (see
:func:`layer_key`). Other arrays (names with another suffix or more than one colon,
such as a test split ``"test:x"`` or float weights ``"float:conv1:w"``) are kept as
they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import WorkloadError
from .model import EEModel, GemmLayer

__all__ = ["Network", "layer_key", "load_weights", "load_network", "check_network", "ROW_ALIGN"]

WEIGHT_RANGE = (-128, 127)          #: int8 operands (HwConfig's default data_width = 8)
BIAS_RANGE = (-(1 << 31), (1 << 31) - 1)
ROW_ALIGN = 8      #: a layer with r > 1 writes rows of c elements; c must be a multiple of this


class Network(NamedTuple):
    """An early-exit network with its integer weights and exit tests."""
    model: EEModel
    weights: dict            #: array name -> numpy array, everything in the .npz
    thresholds: list         #: one int per early exit
    criteria: list           #: one of "margin" / "max" per early exit


def exit_name(model: EEModel, i: int) -> str:
    names = (model.meta or {}).get("exit_names") or []
    return names[i] if i < len(names) and isinstance(names[i], str) else f"exit{i}"


def layer_key(model: EEModel, exit_index: int | None, layer: GemmLayer) -> str:
    """Array-name prefix of a layer: its name for a backbone layer (``exit_index`` None),
    ``"<exit name>.<layer name>"`` for a layer of head ``exit_index`` (so a ``pool-fc``
    head, whose layer is called ``"exit0.fc"``, has the prefix ``"exit0.exit0.fc"``)."""
    if exit_index is None:
        return layer.name
    return f"{exit_name(model, exit_index)}.{layer.name}"


def _all_layers(model: EEModel):
    for l in model.layers:
        yield layer_key(model, None, l), l
    for i, e in enumerate(model.exits):
        for l in e.layers:
            yield layer_key(model, i, l), l


def load_weights(model: EEModel, path=None) -> dict:
    """Read and check the weights file of ``model`` (``path`` or ``model.meta["weights"]``)."""
    src = (model.meta or {}).get("path") or model.name
    if path is None:
        path = (model.meta or {}).get("weights")
        if path is None:
            raise WorkloadError.at(src, "model.weights", None, "missing: this model has no weights file; "
                                   "give [model] weights = \"file.npz\"")
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise WorkloadError.at(src, "model.weights", str(path), f"cannot read as a numpy .npz file: {e}") from None
    expected = {}
    for key, l in _all_layers(model):
        expected[f"{key}:w"] = ((l.p, l.c), WEIGHT_RANGE, True)
        expected[f"{key}:b"] = ((l.c,), BIAS_RANGE, False)
    for k in arrays:      # "<key>:w" / "<key>:b" name a layer; more colons ("float:conv1:w") are extra data
        if k.endswith((":w", ":b")) and k.count(":") == 1 and k not in expected:
            allowed = ", ".join(sorted(expected))
            raise WorkloadError.at(path, k, arrays[k].shape, f"no layer of model {model.name!r} has this "
                                   f"name; allowed: {allowed}")
    for k, (shape, (lo, hi), required) in expected.items():
        if k not in arrays:
            if required:
                raise WorkloadError.at(path, k, None, f"missing: needs an integer array of shape {shape}")
            continue
        a = arrays[k]
        if not np.issubdtype(a.dtype, np.integer):
            raise WorkloadError.at(path, k, str(a.dtype), f"must be an integer array (shape {shape})")
        if a.shape != shape:
            raise WorkloadError.at(path, k, a.shape, f"wrong shape; must be {shape}")
        if a.size and not (lo <= int(a.min()) and int(a.max()) <= hi):
            bad = int(a.min()) if int(a.min()) < lo else int(a.max())
            raise WorkloadError.at(path, k, bad, f"value out of range; allowed: {lo} to {hi}")
    return arrays


def check_network(model: EEModel) -> None:
    """Check that a model can run as an integer network (docs/models.md, "Weights and exit
    tests"): every layer reads its producer's output flattened (``r' * p' = r * c``), a
    layer with ``r > 1`` has ``p`` and ``c`` multiples of 8 (memory rows of 8 bytes), hidden
    layers requantise to int8
    (``mult`` set), classifiers (the last backbone layer and each head's last layer) are
    raw (no ``mult``, no ReLU) with ``r = 1`` and the same number of classes, no groups."""
    src = (model.meta or {}).get("path") or model.name

    def chain(layers, where, first_in=None):
        for j, l in enumerate(layers):
            key = f"{where}[{j}]"
            if l.groups != 1:
                raise WorkloadError.at(src, f"{key}.groups", l.groups, "must be 1 in a network with weights")
            if first_in is not None and l.r * l.p != first_in:
                raise WorkloadError.at(src, f"{key}", l.name, f"reads r * p = {l.r} * {l.p} = {l.r * l.p} values; "
                                       f"its producer writes {first_in} (r * c)")
            last = j == len(layers) - 1
            if last:
                if l.mult is not None or l.relu or l.r != 1:
                    raise WorkloadError.at(src, key, l.name, "a classifier layer must have r = 1, no mult "
                                           "and no relu (raw int32 logits)")
            if l.r > 1 and l.p % ROW_ALIGN:
                raise WorkloadError.at(src, f"{key}.p", l.p, f"a layer with r = {l.r} > 1 must have p a "
                                       f"multiple of {ROW_ALIGN} (its input rows are memory aligned)")
            if not last:
                if l.mult is None:
                    raise WorkloadError.at(src, f"{key}.mult", None, "missing: a hidden layer must "
                                           "requantise to int8 (give mult and shift)")
                if l.r > 1 and l.c % ROW_ALIGN:
                    raise WorkloadError.at(src, f"{key}.c", l.c, f"a layer with r = {l.r} > 1 must have c a "
                                           f"multiple of {ROW_ALIGN} (memory row alignment)")
            first_in = l.r * l.c

    chain(model.layers, "model.layers")
    for i, e in enumerate(model.exits):
        prod = model.layers[e.after]
        if prod.r > 1 and prod.c % ROW_ALIGN:
            raise WorkloadError.at(src, f"exits[{i}].after", prod.name, f"its output (r = {prod.r}, c = "
                                   f"{prod.c}) is not row aligned: c must be a multiple of {ROW_ALIGN}")
        chain(e.layers, f"exits[{i}].layers", prod.r * prod.c)
        if e.layers[-1].c != model.layers[-1].c:
            raise WorkloadError.at(src, f"exits[{i}].layers[{len(e.layers) - 1}].c", e.layers[-1].c,
                                   f"must equal the final classifier's classes ({model.layers[-1].c})")


def load_network(name_or_path) -> Network:
    """A zoo name, a model TOML path or an EEModel -> :class:`Network`.

    The model must have a weights file and a threshold on every early exit."""
    from .zoo import resolve_model

    model = resolve_model(name_or_path)
    src = (model.meta or {}).get("path") or model.name
    weights = load_weights(model)
    thresholds, criteria = [], []
    for i, e in enumerate(model.exits):
        if e.threshold is None:
            raise WorkloadError.at(src, f"exits[{i}].threshold", None, "missing: a network with weights "
                                   "needs an exit threshold on every early exit")
        thresholds.append(e.threshold)
        criteria.append(e.criterion or "margin")
    check_network(model)
    return Network(model, weights, thresholds, criteria)
