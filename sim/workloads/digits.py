"""The ``digits`` early-exit CNN: trained in numpy on scikit-learn's handwritten digits,
quantised to the NPU's integer format, with an integer reference that uses the NPU's
bit-exact GEMM reference layer by layer.

Architecture (per 8x8 image; every layer is one GEMM ``O[r x c] = X[r x p] . W[p x c]``):

====== ====================================== ===== ===== ===== =========
layer  what                                   r     p     c     output
====== ====================================== ===== ===== ===== =========
conv1  3x3 conv, 8 filters, valid, ReLU       36    16    8     6x6x8
conv2  1x6 conv (a whole row), 16 filters     6     48    16    6x1x16
fc1    fully connected, ReLU                  1     96    64    64
fc2    fully connected (final classifier)     1     64    10    logits
exit0  after conv1: fully connected           1     288   10    logits
exit1  after conv2: fully connected           1     96    10    logits
====== ====================================== ===== ===== ===== =========

conv1 is the only layer that needs an im2col (done once on the input image; its 9 taps
are padded with zeros to p = 16 so that a layer with r > 1 reads 8-byte aligned rows); every
later layer reads its producer's ``r x c`` output flattened row-major and reshaped to
``r' x p'``: conv2's im2col is that reshape (one output row of conv1 = 6 pixels x 8
channels = 48 values), and the fully connected layers read the whole flattened output.

Integer semantics (what the RTL does, per sample; see docs/models.md): each layer is
``gemm_reference(cfg, X, W, b, out_mode, mult, shift, relu)`` with int8 ``X`` and
``W``, int32 ``b``; hidden layers requantise (``mult``, ``shift``) and apply ReLU, the
classifiers (final layer and each head's last layer) return raw int32 logits. An early
exit takes the sample when ``top1 - top2 >= threshold`` ("margin") or ``top1 >=
threshold`` ("max"); the class is the argmax (lowest index on ties).

Training needs scikit-learn (only for the data); loading and running the shipped model
does not.
"""
from __future__ import annotations

import io
import json
import math
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .model import EEModel, ExitHead, GemmLayer

__all__ = ["BACKBONE", "HEADS", "TrainConfig", "DigitsResult", "load_split", "quantise_images", "im2col",
           "architecture", "train_float", "float_params", "float_logits", "quantise", "integer_logits", "exit_decisions",
           "choose_thresholds", "evaluate", "train_digits", "write_model", "accuracy_report"]

IMG = 8                 #: image side
K = 3                   #: conv1 kernel side
OUT = IMG - K + 1       #: conv1 output side (valid padding): 6
P0 = 16                 #: conv1's 9 taps padded with 7 zero columns: rows of r > 1 layers are 8-byte aligned
NUM_CLASSES = 10
INPUT_SCALE = 127       #: int8 input = round(pixel / 16 * 127); the float model sees int8 / 127

BACKBONE = (
    GemmLayer("conv1", r=OUT * OUT, p=P0, c=8, kind="conv", relu=True),
    GemmLayer("conv2", r=OUT, p=OUT * 8, c=16, relu=True),     # 1x6 conv: a GEMM on conv1's rows
    GemmLayer("fc1", r=1, p=OUT * 16, c=64, relu=True),
    GemmLayer("fc2", r=1, p=64, c=NUM_CLASSES),
)
#: (exit name, backbone layer index, head layers)
HEADS = (
    ("exit0", 0, (GemmLayer("fc", r=1, p=OUT * OUT * 8, c=NUM_CLASSES),)),
    ("exit1", 1, (GemmLayer("fc", r=1, p=OUT * 16, c=NUM_CLASSES),)),
)
MULT_MAX = (1 << 15) - 1       #: signed 16-bit requantisation multiplier (HwConfig.mult_width)
SHIFT_MAX = 63


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the defaults made the shipped model)."""
    seed: int = 0               #: weight initialisation and minibatch order
    epochs: int = 200
    batch: int = 32
    lr: float = 3e-3            #: Adam step size (cosine decay to lr / 20)
    weight_decay: float = 1e-4  #: L2 on the weights
    loss_weights: tuple = (1.0, 1.0, 1.0)   #: per exit: exit0, exit1, final
    test_size: float = 0.3      #: share of the 1797 images in the test split
    calib_size: float = 0.2     #: share of the training split held out to choose thresholds
    split_seed: int = 0         #: random_state of both stratified splits (independent of seed)
    act_percentile: float = 99.99   #: activation range for requantisation, on the training split
    acc_tolerance: float = 0.0  #: thresholds keep calibration accuracy within this many points of the final exit
    criterion: str = "margin"
    shift: int = 1              #: data augmentation: random shifts of up to this many pixels


# ----------------------------------------------------------------------------- data

def quantise_images(pixels: np.ndarray) -> np.ndarray:
    """scikit-learn digit pixels (0..16) -> int8 (0..127): ``floor(pixel * 127 / 16 + 1/2)``."""
    return np.floor(np.asarray(pixels, dtype=np.float64) * INPUT_SCALE / 16 + 0.5).astype(np.int8)


def im2col(images: np.ndarray) -> np.ndarray:
    """(N, 64) images (row-major 8x8) -> (N, 36 * 16) conv1 input rows, row-major: output
    pixel (i, j) = row i * 6 + j holds ``img[i + di, j + dj]`` at column ``di * 3 + dj``
    (columns 0..8) and zeros in columns 9..15 (so that a row is 16 bytes, a multiple of the
    8-byte memory beat)."""
    img = np.asarray(images).reshape(-1, IMG, IMG)
    cols = [img[:, di:di + OUT, dj:dj + OUT] for di in range(K) for dj in range(K)]
    cols += [np.zeros_like(cols[0])] * (P0 - K * K)
    return np.stack(cols, axis=-1).reshape(len(img), OUT * OUT * P0)


def load_split(cfg: TrainConfig = TrainConfig()):
    """The stratified train/test split of ``sklearn.datasets.load_digits``, with the
    training split divided again into a fitting part and a calibration part.

    Returns a dict of int8 images (N, 64), labels and the indices into load_digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=cfg.test_size, random_state=cfg.split_seed, stratify=d.target)
    fit, cal = train_test_split(tr, test_size=cfg.calib_size, random_state=cfg.split_seed,
                                stratify=d.target[tr])
    img = quantise_images(d.data)
    y = d.target.astype(np.int64)
    return {part: (img[ix], y[ix], ix)
            for part, ix in (("train", tr), ("fit", fit), ("calib", cal), ("test", te))}


# ------------------------------------------------------------------------ the model

def architecture(thresholds=None, criterion="margin", probs=None, layer_params=None, source="") -> EEModel:
    """The digits EEModel; ``layer_params`` maps a layer key to ``{mult, shift}``."""
    lp = layer_params or {}
    backbone = tuple(replace(l, **lp.get(l.name, {})) for l in BACKBONE)
    exits = []
    for i, (name, after, layers) in enumerate(HEADS):
        t = None if thresholds is None else int(thresholds[i])
        exits.append(ExitHead(after, tuple(replace(l, **lp.get(f"{name}.{l.name}", {})) for l in layers),
                              threshold=t, criterion=None if t is None else criterion))
    probs = probs or tuple([1.0 / (len(HEADS) + 1)] * (len(HEADS) + 1))
    return EEModel("digits", backbone, tuple(exits), tuple(probs), source=source,
                   meta={"exit_names": [h[0] for h in HEADS], "num_classes": NUM_CLASSES})


def _keys():
    """(key, layer) for every layer: the backbone, then each head's layers."""
    return [(l.name, l) for l in BACKBONE] + [(f"{n}.{l.name}", l) for n, _, ls in HEADS for l in ls]


# -------------------------------------------------------------------- float network

def _init(rng) -> dict:
    params = {}
    for key, l in _keys():
        fan_in = K * K if key == "conv1" else l.p
        w = np.zeros((l.p, l.c))        # conv1's padding rows stay 0: their inputs are 0
        w[:fan_in] = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, l.c))
        params[key] = [w, np.zeros(l.c)]
    return params


def _chain(params, keys_layers, a, caches):
    n = len(a)
    for key, l in keys_layers:
        x = a.reshape(n * l.r, l.p)
        w, b = params[key]
        z = x @ w + b
        caches[key] = (x, z)
        a = (np.maximum(z, 0.0) if l.relu else z).reshape(n, l.r * l.c)
    return a


def _forward(params, x):
    """Float forward pass on (N, 576) conv1 inputs: logits per exit (early ones first,
    the final last), backbone outputs, caches for the backward pass."""
    caches, outs, a = {}, [], x
    for l in BACKBONE:
        a = _chain(params, [(l.name, l)], a, caches)
        outs.append(a)
    logits = [_chain(params, [(f"{n}.{l.name}", l) for l in ls], outs[after], caches)
              for n, after, ls in HEADS]
    return logits + [outs[-1]], outs, caches


def _chain_back(params, keys_layers, da, caches, grads):
    n = len(da)
    for key, l in reversed(keys_layers):
        x, z = caches[key]
        dz = da.reshape(n * l.r, l.c)
        if l.relu:
            dz = dz * (z > 0)
        grads[key] = [x.T @ dz, dz.sum(axis=0)]
        da = (dz @ params[key][0].T).reshape(n, l.r * l.p)
    return da


def _softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    p[np.arange(n), y] -= 1.0
    return loss, p / n


def _loss_and_grads(params, x, y, weights):
    logits, outs, caches = _forward(params, x)
    grads, total = {}, 0.0
    d_outs = [np.zeros_like(o) for o in outs]
    for i, (name, after, layers) in enumerate(HEADS):
        loss, d = _softmax_xent(logits[i], y)
        total += weights[i] * loss
        d_outs[after] += _chain_back(params, [(f"{name}.{l.name}", l) for l in layers],
                                     weights[i] * d, caches, grads)
    loss, d = _softmax_xent(logits[-1], y)
    total += weights[-1] * loss
    d_outs[-1] += weights[-1] * d
    for k in range(len(BACKBONE) - 1, -1, -1):
        l = BACKBONE[k]
        dx = _chain_back(params, [(l.name, l)], d_outs[k], caches, grads)
        if k:
            d_outs[k - 1] += dx
    return total, grads


def _shifted(images: np.ndarray, rng, max_shift: int) -> np.ndarray:
    """Each (8x8) image moved by a random (dy, dx) in [-max_shift, max_shift], zero filled."""
    n, m = len(images), max_shift
    pad = np.zeros((n, IMG + 2 * m, IMG + 2 * m), dtype=images.dtype)
    pad[:, m:m + IMG, m:m + IMG] = images.reshape(n, IMG, IMG)
    dy, dx = rng.integers(-m, m + 1, size=(2, n))
    rows = (m - dy)[:, None] + np.arange(IMG)[None, :]          # (n, 8)
    cols = (m - dx)[:, None] + np.arange(IMG)[None, :]
    return pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].reshape(n, IMG * IMG)


def train_float(images, y, cfg: TrainConfig = TrainConfig(), log=None) -> tuple[dict, list]:
    """Adam on the joint loss over all exits, on (N, 64) int8 images (randomly shifted by
    up to ``cfg.shift`` pixels each epoch); returns the parameters and the loss per epoch."""
    rng = np.random.default_rng(cfg.seed)
    params = _init(rng)
    m = {k: [np.zeros_like(a) for a in v] for k, v in params.items()}
    v = {k: [np.zeros_like(a) for a in v] for k, v in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    n, step, history = len(images), 0, []
    steps_total = cfg.epochs * math.ceil(n / cfg.batch)
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        imgs = _shifted(images, rng, cfg.shift) if cfg.shift else images
        x = im2col(imgs) / INPUT_SCALE
        losses = []
        for s in range(0, n, cfg.batch):
            bi = order[s:s + cfg.batch]
            loss, grads = _loss_and_grads(params, x[bi], y[bi], cfg.loss_weights)
            losses.append(loss)
            lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps_total)))
            step += 1
            for key, g in grads.items():
                g[0] = g[0] + cfg.weight_decay * params[key][0]
                for j in range(2):
                    m[key][j] = b1 * m[key][j] + (1 - b1) * g[j]
                    v[key][j] = b2 * v[key][j] + (1 - b2) * g[j] ** 2
                    mh = m[key][j] / (1 - b1 ** step)
                    vh = v[key][j] / (1 - b2 ** step)
                    params[key][j] = params[key][j] - lr * mh / (np.sqrt(vh) + eps)
        history.append(float(np.mean(losses)))
        if log:
            log(epoch, history[-1])
    return params, history


def float_params(weights: dict) -> dict:
    """The float model shipped next to the integer one (arrays ``"float:<key>:w"``/``":b"``)."""
    return {key: [np.asarray(weights[f"float:{key}:w"], dtype=np.float64),
                  np.asarray(weights[f"float:{key}:b"], dtype=np.float64)] for key, _ in _keys()}


def float_logits(params, x) -> list[np.ndarray]:
    """Float logits per exit for (N, 576) conv1 inputs (int8 values / 127)."""
    return _forward(params, x)[0]


# --------------------------------------------------------------------- quantisation

def _round(v):
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5)


def fixed_point(m: float) -> tuple[int, int]:
    """(mult, shift) with ``mult / 2**shift`` closest to ``m``: the largest shift whose
    multiplier fits a signed 16-bit field."""
    if not m > 0:
        raise ValueError(f"requantisation scale {m!r} must be positive")
    for shift in range(SHIFT_MAX, -1, -1):
        mult = int(_round(m * 2.0 ** shift))
        if 1 <= mult <= MULT_MAX:
            return mult, shift
    raise ValueError(f"requantisation scale {m!r} does not fit a 16-bit multiplier")


def quantise(params, x_calib, cfg: TrainConfig = TrainConfig()):
    """Symmetric per-tensor int8 weights, int32 biases, per-layer (mult, shift).

    Scales: a tensor's integer value is its float value times its scale. The input's
    scale is 127; a weight tensor's is ``127 / max|W|``; a hidden layer's output scale
    is ``127 / a`` with ``a`` the ``act_percentile`` of its (ReLU) outputs on
    ``x_calib``, realised as ``mult / 2**shift`` times the accumulator scale (input
    scale x weight scale). Classifier layers keep the raw int32 accumulator, so their
    logits are the float logits times the accumulator scale.

    Returns (weights dict, layer_params dict, logit scale per exit)."""
    _, outs, caches = _forward(params, x_calib)
    weights, lp, act_scale = {}, {}, {}

    def layer(key, l, s_in, a_float):
        w, b = params[key]
        s_w = 127.0 / max(float(np.abs(w).max()), 1e-12)
        wq = np.clip(_round(w * s_w), -127, 127).astype(np.int8)
        s_acc = s_in * s_w
        weights[f"{key}:w"] = wq
        weights[f"{key}:b"] = np.clip(_round(b * s_acc), -(1 << 31), (1 << 31) - 1).astype(np.int32)
        if not l.relu:                         # a classifier: raw logits
            return s_acc
        a = float(np.percentile(a_float, cfg.act_percentile))
        mult, shift = fixed_point(127.0 / max(a, 1e-12) / s_acc)
        lp[key] = {"mult": mult, "shift": shift}
        return s_acc * mult / 2.0 ** shift     # the output scale actually realised

    s = float(INPUT_SCALE)
    for k, l in enumerate(BACKBONE):
        s = layer(l.name, l, s, outs[k])
        act_scale[k] = s
    logit_scale = []
    for name, after, layers in HEADS:
        s = act_scale[after]
        for l in layers:
            key = f"{name}.{l.name}"
            s = layer(key, l, s, np.maximum(caches[key][1], 0.0) if l.relu else None)
        logit_scale.append(s)
    logit_scale.append(act_scale[len(BACKBONE) - 1])
    return weights, lp, logit_scale


# ---------------------------------------------------------------- integer reference

def integer_logits(model: EEModel, weights: dict, x: np.ndarray, hw=None) -> list[np.ndarray]:
    """Integer logits per exit (early heads first, the final classifier last) of a network
    with weights, for (N, r0 * p0) int8 inputs: every layer is one
    :func:`fluidnpu.hw.reference.gemm_reference` call on all N samples stacked along R
    (rows are independent, so this equals running each sample on its own)."""
    from .weights import layer_key
    from ...hw.config import HwConfig
    from ...hw.interface import OUT_RAW, OUT_REQUANT
    from ...hw.reference import gemm_reference

    hw = hw or HwConfig()
    x = np.asarray(x, dtype=np.int64)
    n = len(x)

    def run(key, l, a):
        y = gemm_reference(hw, a.reshape(n * l.r, l.p), weights[f"{key}:w"], weights.get(f"{key}:b"),
                           out_mode=OUT_REQUANT if l.mult is not None else OUT_RAW,
                           mult=1 if l.mult is None else l.mult, shift=l.shift or 0, relu=l.relu)
        return y.reshape(n, l.r * l.c)

    outs, a = [], x
    for l in model.layers:
        a = run(layer_key(model, None, l), l, a)
        outs.append(a)
    logits = []
    for i, e in enumerate(model.exits):
        h = outs[e.after]
        for l in e.layers:
            h = run(layer_key(model, i, l), l, h)
        logits.append(h)
    return logits + [outs[-1]]


def exit_scores(logits: np.ndarray, criterion: str) -> np.ndarray:
    """Per sample: ``top1 - top2`` ("margin") or ``top1`` ("max") of the logits."""
    s = np.sort(logits, axis=1)
    if criterion == "margin":
        return s[:, -1] - s[:, -2]
    if criterion == "max":
        return s[:, -1]
    raise ValueError(f"criterion = {criterion!r}: must be 'margin' or 'max'")


def exit_decisions(logits: list, thresholds, criteria) -> tuple[np.ndarray, np.ndarray]:
    """(exit index, predicted class) per sample: the first early exit whose test passes,
    else the final exit; the class is that exit's argmax (lowest index on ties)."""
    n = len(logits[-1])
    exit_at = np.full(n, len(logits) - 1, dtype=np.int64)
    pred = np.argmax(logits[-1], axis=1)
    free = np.ones(n, dtype=bool)
    for i, (lg, t, c) in enumerate(zip(logits[:-1], thresholds, criteria)):
        go = free & (exit_scores(lg, c) >= t)
        exit_at[go] = i
        pred[go] = np.argmax(lg[go], axis=1)
        free &= ~go
    return exit_at, pred


def choose_thresholds(logits: list, y: np.ndarray, costs, criterion="margin", tolerance=0.5):
    """Integer thresholds for the early exits, chosen on held-out data: the least mean
    cost (MACs to exit) whose overall accuracy stays within ``tolerance`` points of the
    final exit's accuracy on the same data; among equal costs, the most accurate, then
    the highest thresholds. Exhaustive over the observed scores (two early exits)."""
    if len(logits) != 3:
        raise ValueError("choose_thresholds searches two early exits")
    n = len(y)
    correct = [np.argmax(lg, axis=1) == y for lg in logits]
    target = correct[-1].mean() - tolerance / 100.0
    s0, s1 = (exit_scores(lg, criterion) for lg in logits[:2])
    cand0 = np.unique(np.concatenate([s0, [s0.max() + 1]]))
    cand1 = np.unique(np.concatenate([s1, [s1.max() + 1]]))
    best = None
    take1 = s1[None, :] >= cand1[:, None]                     # (T1, N)
    for t0 in cand0:
        at0 = s0 >= t0
        at1 = ~at0[None, :] & take1
        at2 = ~at0[None, :] & ~take1
        acc = (np.sum(at0 & correct[0]) + np.sum(at1 & correct[1], axis=1)
               + np.sum(at2 & correct[2], axis=1)) / n
        cost = (at0.sum() * costs[0] + at1.sum(axis=1) * costs[1] + at2.sum(axis=1) * costs[2]) / n
        for j in np.flatnonzero(acc >= target - 1e-12):
            key = (cost[j], -acc[j], -int(t0), -int(cand1[j]))
            if best is None or key < best[0]:
                best = (key, int(t0), int(cand1[j]))
    return [best[1], best[2]]


# ------------------------------------------------------------------------- evaluation

def evaluate(logits: list, y: np.ndarray, thresholds, criteria) -> dict:
    """Accuracy of every exit's classifier on all samples, exit counts and rates, the
    accuracy of the samples each exit takes, and the overall early-exit accuracy."""
    n = len(y)
    exit_at, pred = exit_decisions(logits, thresholds, criteria)
    counts = [int(np.sum(exit_at == i)) for i in range(len(logits))]
    taken = [float(np.mean(pred[exit_at == i] == y[exit_at == i])) if counts[i] else None
             for i in range(len(logits))]
    return {
        "n": int(n),
        "exit_accuracy": [float(np.mean(np.argmax(lg, axis=1) == y)) for lg in logits],
        "counts": counts,
        "rates": [c / n for c in counts],
        "taken_accuracy": taken,
        "accuracy": float(np.mean(pred == y)),
        "correct": int(np.sum(pred == y)),
    }


def float_evaluation(model: EEModel, weights: dict, x: np.ndarray, y: np.ndarray, thresholds, criteria):
    """:func:`evaluate` of the float model shipped beside the integer weights, on int8 conv1
    inputs ``x`` (N, 576), with the integer thresholds in float logit units (divided by the
    model's ``[meta] logit_scale``); None when the files hold no float model."""
    scales = ((model.meta or {}).get("extra") or {}).get("logit_scale")
    keys = [k for k, _ in _keys()]
    if not scales or any(f"float:{k}:w" not in weights for k in keys) or np.shape(x)[1:] != (
            BACKBONE[0].r * BACKBONE[0].p,):
        return None
    f_thr = [t / s for t, s in zip(thresholds, scales)]
    return evaluate(float_logits(float_params(weights), np.asarray(x) / INPUT_SCALE), y, f_thr, criteria)


# -------------------------------------------------------------------------- pipeline

@dataclass
class DigitsResult:
    """A trained, quantised digits network and its figures."""
    config: TrainConfig
    model: EEModel                     #: with mult/shift, thresholds and measured test rates
    weights: dict                      #: layer arrays ("<key>:w", "<key>:b") and the test split
    thresholds: list
    logit_scale: list                  #: integer logit = float logit * scale, per exit
    float_params: dict = field(repr=False)
    report: dict = field(default_factory=dict)


def train_digits(cfg: TrainConfig = TrainConfig(), log=None) -> DigitsResult:
    """Train, quantise, choose thresholds and evaluate; nothing is written."""
    t_start = time.perf_counter()
    parts = load_split(cfg)
    xs = {p: im2col(v[0]) for p, v in parts.items()}
    ys = {p: v[1] for p, v in parts.items()}
    params, history = train_float(parts["fit"][0], ys["fit"], cfg, log=log)
    # The float model is shipped as float32; every figure below comes from those values.
    params = {k: [a.astype(np.float32).astype(np.float64) for a in v] for k, v in params.items()}
    t_train = time.perf_counter() - t_start

    weights, lp, scales = quantise(params, xs["train"] / INPUT_SCALE, cfg)
    model = architecture(layer_params=lp)
    costs = [model.macs_to_exit(i) for i in range(model.n_exits)]
    crit = [cfg.criterion] * len(HEADS)
    cal_int = integer_logits(model, weights, xs["calib"])
    thresholds = choose_thresholds(cal_int, ys["calib"], costs, cfg.criterion, cfg.acc_tolerance)

    test_int = integer_logits(model, weights, xs["test"])
    ev_int = evaluate(test_int, ys["test"], thresholds, crit)
    # The float model with the same thresholds in float logit units.
    f_thr = [t / s for t, s in zip(thresholds, scales)]
    ev_float = evaluate(float_logits(params, xs["test"] / INPUT_SCALE), ys["test"], f_thr, crit)
    ev_cal = evaluate(cal_int, ys["calib"], thresholds, crit)

    n = ev_int["n"]
    probs = [c / n for c in ev_int["counts"]]
    source = (f"measured: exit counts {ev_int['counts']} of the {n} images of the digits test split, "
              f"by the integer reference (fluidnpu train-digits, seed {cfg.seed})")
    model = architecture(thresholds, cfg.criterion, probs, lp, source)
    weights = dict(weights)
    weights["test:x"] = xs["test"].astype(np.int8)
    weights["test:y"] = ys["test"].astype(np.int64)
    weights["test:images"] = parts["test"][0].astype(np.int8)
    weights["test:index"] = parts["test"][2].astype(np.int64)
    for key, (w, b) in params.items():          # the float model, so that its figures can be checked
        weights[f"float:{key}:w"], weights[f"float:{key}:b"] = w.astype(np.float32), b.astype(np.float32)
    report = {
        "seed": cfg.seed, "epochs": cfg.epochs,
        "train_seconds": round(t_train, 2), "total_seconds": round(time.perf_counter() - t_start, 2),
        "final_loss": history[-1],
        "split": {p: int(len(v[1])) for p, v in parts.items()},
        "macs_to_exit": costs,
        "expected_macs": float(np.dot(probs, costs)),
        "thresholds": thresholds, "criterion": cfg.criterion,
        "float_thresholds": f_thr, "logit_scale": scales,
        "layer_params": lp,
        "float": ev_float, "integer": ev_int, "calibration": ev_cal,
    }
    return DigitsResult(cfg, model, weights, thresholds, scales, params, report)


# ------------------------------------------------------------------------- the files

def _npz_bytes(arrays: dict) -> bytes:
    """A .npz whose bytes depend only on the arrays (fixed zip timestamps, sorted names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k in sorted(arrays):
            info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[k]), allow_pickle=False)
            z.writestr(info, arr.getvalue())
    return buf.getvalue()


def _pct(v):
    return round(100.0 * v, 2)


def accuracy_report(report: dict) -> dict:
    """The figures a model file records (percentages with 2 decimals)."""
    f, q = report["float"], report["integer"]
    return {
        "test_images": q["n"],
        "float_accuracy": _pct(f["accuracy"]),
        "int_accuracy": _pct(q["accuracy"]),
        "int_correct": q["correct"],
        "float_exit_accuracy": [_pct(a) for a in f["exit_accuracy"]],
        "int_exit_accuracy": [_pct(a) for a in q["exit_accuracy"]],
        "int_taken_accuracy": [None if a is None else _pct(a) for a in q["taken_accuracy"]],
        "exit_counts": q["counts"],
        "float_exit_counts": f["counts"],
    }


def _toml_layer(l: GemmLayer) -> str:
    parts = [f'name = "{l.name}"', f"r = {l.r}", f"p = {l.p}", f"c = {l.c}"]
    if l.kind != "gemm":
        parts.append(f'kind = "{l.kind}"')
    if l.relu:
        parts.append("relu = true")
    if l.mult is not None:
        parts += [f"mult = {l.mult}", f"shift = {l.shift}"]
    return "  { " + ", ".join(parts) + " },"


def model_toml(res: DigitsResult) -> str:
    """The model TOML text of a trained digits network."""
    m, rep = res.model, res.report
    acc = accuracy_report(rep)
    cfg = res.config
    lines = [
        "# digits: an early-exit CNN for scikit-learn's 8x8 handwritten digits, trained in numpy,",
        "# quantised to int8 weights / int32 biases / per-layer (mult, shift), with two early exits.",
        "# Written by `fluidnpu train-digits`; do not edit by hand (docs/models.md, \"The digits network\").",
        "[model]",
        'name = "digits"',
        'description = "CNN conv3x3(8)-conv1x6(16)-fc64-fc10 for 8x8 digits, exits after conv1 and conv2"',
        'dataset = "scikit-learn digits (1797 images, 8x8, 17 grey levels); stratified 70/30 train/test split"',
        "input = [8, 8, 1]",
        f"num_classes = {NUM_CLASSES}",
        'weights = "digits.npz"',
        "layers = [",
        *[_toml_layer(l) for l in m.layers],
        "]",
    ]
    for i, (name, _, _) in enumerate(HEADS):
        e = m.exits[i]
        lines += ["", "[[exits]]", f'name = "{name}"', f'after = "{m.layers[e.after].name}"',
                  "layers = [", *[_toml_layer(l) for l in e.layers], "]",
                  f"threshold = {e.threshold}", f'criterion = "{e.criterion}"']
    lines += ["", "[exit_rates]",
              "probs = [" + ", ".join(repr(q) for q in m.exit_probs) + "]",
              f"source = {json.dumps(m.source)}", "", "[meta]"]
    for k, v in acc.items():
        lines.append(f"{k} = {json.dumps(v)}".replace("null", '"none"'))
    lines += [f"seed = {cfg.seed}", f"epochs = {cfg.epochs}",
              f"logit_scale = {json.dumps([float(s) for s in res.logit_scale])}",
              f"float_thresholds = {json.dumps([float(t) for t in rep['float_thresholds']])}"]
    return "\n".join(lines) + "\n"


def write_model(res: DigitsResult, out_dir) -> tuple[Path, Path]:
    """Write ``digits.toml`` and ``digits.npz`` into ``out_dir`` as a pair (both or neither:
    :func:`fluidnpu.outputs.staged_output`); return their paths."""
    from fluidnpu.outputs import staged_output
    npz, toml = _npz_bytes(res.weights), model_toml(res)
    with staged_output(out_dir, "train-digits", manifest=False) as st:
        (st.path / "digits.npz").write_bytes(npz)
        (st.path / "digits.toml").write_text(toml)
    return st.final("digits.toml"), st.final("digits.npz")
