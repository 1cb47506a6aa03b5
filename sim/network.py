"""Early-exit networks on the Fluid Batching Engine: the program compiler, the memory
image and the numpy reference of a sample run alone.

``compile_network`` turns an :class:`~.workloads.model.EEModel` with int8 weights, exit
thresholds and the mapper's policies into the FBE's program entries, control-table words
and a memory map (docs/fbe.md). ``reference_sample`` is the bit-exact answer for one
sample: which exit it takes, its class and its logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.fbe_layout import (CRIT_MARGIN, CRIT_MAX, SRC_BACKBONE, SRC_INPUT, SRC_PREV,
                                    entry_layout, policy_word)
from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
from fluidnpu.hw.layout import out_elem_bytes, roundup
from fluidnpu.hw.reference import gemm_reference

from .workloads.model import EEModel, GemmLayer
from .workloads.weights import exit_name

__all__ = ["NetworkError", "NetEntry", "NetworkProgram", "compile_network", "reference_sample",
           "CRITERIA", "random_network"]

CRITERIA = {"margin": CRIT_MARGIN, "max": CRIT_MAX}


class NetworkError(ValueError):
    """A network the FBE cannot run; the message names the layer, the field and the rule."""


@dataclass(frozen=True)
class NetEntry:
    """One program entry (a GEMM layer in execution order) and where it lives."""
    name: str            #: backbone layer name, or "<exit>.<head layer>"
    layer: GemmLayer
    lid: int             #: control-table column (the mapper's layer id)
    src: int
    backbone: bool
    exit_id: int | None  #: the exit test after it (None: no test)
    final: bool
    out: tuple[int, int]  #: output regions (main, catch-up contexts)
    blk: int             #: bytes of one sample's output
    w_addr: int
    b_addr: int

    @property
    def out_mode(self) -> int:
        return OUT_RAW if self.layer.mult is None else OUT_REQUANT


@dataclass
class NetworkProgram:
    """A compiled network: entries, their packed descriptors, the memory map and image."""
    cfg: HwConfig
    model: EEModel
    entries: list[NetEntry]
    thresholds: tuple[int, ...]
    criteria: tuple[int, ...]
    input_addr: int            #: first sample input area
    input_stride: int          #: bytes per input area
    n_inputs: int
    res_addr: int
    res_shift: int
    mem: np.ndarray            #: initial memory (weights, biases; inputs and outputs zero)
    weights: dict = field(repr=False, default_factory=dict)
    input_shape: tuple[int, int] = field(init=False)

    def __post_init__(self):
        l0 = self.model.layers[0]
        self.input_shape = (l0.r, l0.p)

    def descriptor(self, i: int) -> dict:
        """Entry ``i`` as a dict of :func:`~fluidnpu.hw.fbe_layout.entry_layout` fields."""
        e = self.entries[i]
        L = e.layer
        eid = e.exit_id
        return dict(r=L.r, p=L.p, c=L.c, w_addr=e.w_addr, b_addr=e.b_addr, out0=e.out[0], out1=e.out[1],
                    blk=e.blk, bias_en=int(e.b_addr != 0), out_mode=e.out_mode, relu=int(L.relu),
                    mult=1 if L.mult is None else L.mult, shift=L.shift or 0, src=e.src,
                    backbone=int(e.backbone), lid=e.lid, exit=int(eid is not None), final=int(e.final),
                    crit=self.criteria[eid] if eid is not None and not e.final else 0,
                    exit_id=eid if eid is not None else 0,
                    thr=self.thresholds[eid] if eid is not None and not e.final else 0)

    def packed_entries(self) -> list[int]:
        lay = entry_layout(self.cfg)
        return [int(lay.const(self.descriptor(i)).as_bits()) for i in range(len(self.entries))]

    def input_area(self, n: int) -> int:
        """Address of sample input area ``n``."""
        if not 0 <= n < self.n_inputs:
            raise NetworkError(f"input area {n}: the image has {self.n_inputs}")
        return self.input_addr + n * self.input_stride

    def put_input(self, mem: np.ndarray, n: int, x: np.ndarray) -> None:
        """Write sample ``x`` (int8, shape ``input_shape``) into input area ``n`` of ``mem``."""
        x = np.asarray(x)
        if x.shape != self.input_shape:
            raise NetworkError(f"input {n}: shape {x.shape}, expected {self.input_shape}")
        if x.min() < self.cfg.data_min or x.max() > self.cfg.data_max:
            raise NetworkError(f"input {n}: values outside {self.cfg.data_min}..{self.cfg.data_max}")
        stride = roundup(x.shape[1] * self.cfg.elem_bytes, self.cfg.mem_bytes)
        a = self.input_area(n)
        dt = "<i1" if self.cfg.elem_bytes == 1 else "<i2"
        for i in range(x.shape[0]):
            by = x[i].astype(dt).view(np.uint8)
            mem[a + i * stride: a + i * stride + by.size] = by

    def read_result(self, mem: np.ndarray, tag: int, classes: int) -> np.ndarray:
        a = self.res_addr + (tag << self.res_shift)
        return mem[a:a + 4 * classes].view("<i4").astype(np.int64)

    def table_words(self, policies) -> list[tuple[int, int, int]]:
        """``(b, lid, word)`` for every batch size 1..b_max and table column, from
        ``policies[(b, lid)] = (B_R, B_P, k)`` (missing pairs: whole batch, (1, 1))."""
        out = []
        for b in range(1, self.cfg.b_max + 1):
            for e in self.entries:
                br, bp, k = policies.get((b, e.lid), (0, 1, 1))
                out.append((b, e.lid, policy_word(br if br < b else 0, bp, k)))
        return out


def _flatten_ok(prev: GemmLayer, prev_ob: int, nxt: GemmLayer, cfg: HwConfig, what: str) -> None:
    M, eb = cfg.mem_bytes, cfg.elem_bytes
    if prev.r * prev.c != nxt.r * nxt.p:
        raise NetworkError(f"{what}: reads {prev.r} x {prev.c} = {prev.r * prev.c} elements, "
                           f"but r * p = {nxt.r} x {nxt.p} = {nxt.r * nxt.p}")
    if prev_ob != eb:
        raise NetworkError(f"{what}: its input layer keeps raw 32-bit outputs (no mult); a layer "
                           f"that feeds another must requantise (give mult and shift)")
    if prev.r > 1 and (prev.c * eb) % M:
        raise NetworkError(f"{what}: the input layer has r = {prev.r} rows of c = {prev.c} "
                           f"elements; c * {eb} bytes must be a multiple of mem_bytes = {M} to flatten")
    if nxt.r > 1 and (nxt.p * eb) % M:
        raise NetworkError(f"{what}: r = {nxt.r} rows of p = {nxt.p}; p * {eb} bytes must be a "
                           f"multiple of mem_bytes = {M}")


def compile_network(cfg: HwConfig, model: EEModel, weights: dict, thresholds, criteria=None, *,
                    n_inputs: int | None = None, tag_space: int | None = None,
                    seed: int = 0) -> NetworkProgram:
    """Lay ``model`` out for the FBE of ``cfg``.

    ``weights["<layer>:w"]`` (p x c int8) and optional ``"<layer>:b"`` (c int32), head layers
    named ``"<exit name>.<layer>"`` (the EEModel head index ``i`` is ``exit<i>`` unless the
    model's meta names it). ``thresholds``/``criteria`` per early exit. ``n_inputs``
    input areas (default ``4 * b_max``); result areas for tags below ``tag_space``
    (default ``2 ** min(tag_width, 12)``).
    """
    M, eb = cfg.mem_bytes, cfg.elem_bytes
    ne = len(model.exits)
    thresholds = tuple(int(t) for t in thresholds)
    if len(thresholds) != ne:
        raise NetworkError(f"thresholds: {len(thresholds)} given, the model has {ne} early exits")
    crit = criteria if criteria is not None else ["margin"] * ne
    if len(crit) != ne:
        raise NetworkError(f"criteria: {len(crit)} given, the model has {ne} early exits")
    crit_codes = []
    for i, c in enumerate(crit):
        if c not in CRITERIA:
            raise NetworkError(f"exit {i}: criterion = {c!r}: must be one of {', '.join(CRITERIA)}")
        crit_codes.append(CRITERIA[c])
    for i, t in enumerate(thresholds):
        if not -(1 << 31) <= t < (1 << 31):
            raise NetworkError(f"exit {i}: threshold = {t}: must fit a signed 32-bit integer")
    head_names = [exit_name(model, i) for i in range(ne)]

    # execution order: backbone layer, then the head that reads it
    order = []   # (name, layer, lid, src, backbone, exit_id, final)
    n_bb = len(model.layers)
    lid = n_bb
    heads_after = {h.after: i for i, h in enumerate(model.exits)}
    for li, L in enumerate(model.layers):
        last = li == n_bb - 1
        order.append((L.name, L, li, SRC_INPUT if li == 0 else SRC_BACKBONE, True,
                      ne if last else None, last))
        if li in heads_after:
            hi = heads_after[li]
            hl = model.exits[hi].layers
            for k, H in enumerate(hl):
                order.append((f"{head_names[hi]}.{H.name}", H, lid, SRC_BACKBONE if k == 0 else SRC_PREV,
                              False, hi if k == len(hl) - 1 else None, False))
                lid += 1
    if len(order) > cfg.net_entries:
        raise NetworkError(f"the network has {len(order)} layers (backbone and heads); the FBE "
                           f"holds net_entries = {cfg.net_entries}")
    if lid > cfg.net_entries:
        raise NetworkError(f"table columns: {lid} needed, net_entries = {cfg.net_entries}")

    dmax = (1 << cfg.dim_width) - 1
    prev_bb = None
    prev = None
    for name, L, _, src, bbk, eid, final in order:
        if L.groups != 1:
            raise NetworkError(f"layer {name!r}: groups = {L.groups}: the FBE runs ungrouped GEMMs only")
        for f in ("p", "c"):
            if getattr(L, f) > dmax:
                raise NetworkError(f"layer {name!r}: {f} = {getattr(L, f)}: must be at most {dmax}")
        if L.r * cfg.b_max > dmax:
            raise NetworkError(f"layer {name!r}: r = {L.r}: b_max * r = {cfg.b_max * L.r} rows must fit "
                               f"dim_width ({dmax})")
        if f"{name}:w" not in weights:
            raise NetworkError(f"weights: no '{name}:w' for layer {name!r}")
        w = np.asarray(weights[f"{name}:w"])
        if w.shape != (L.p, L.c):
            raise NetworkError(f"weights: '{name}:w' has shape {w.shape}, layer {name!r} needs ({L.p}, {L.c})")
        if eid is not None:
            if L.r != 1 or L.mult is not None or L.relu:
                raise NetworkError(f"layer {name!r}: an exit's classifier must have r = 1 and raw "
                                   f"logits (no mult, no relu)")
            if L.c > cfg.max_classes:
                raise NetworkError(f"layer {name!r}: c = {L.c} logits, the exit unit holds max_classes = "
                                   f"{cfg.max_classes}")
        ref = {SRC_BACKBONE: prev_bb, SRC_PREV: prev}.get(src)
        if ref is not None:
            _flatten_ok(ref, out_elem_bytes(cfg, OUT_RAW if ref.mult is None else OUT_REQUANT), L, cfg,
                        f"layer {name!r}")
        if bbk:
            prev_bb = L
        prev = L
    l0 = model.layers[0]
    if l0.r > 1 and (l0.p * eb) % M:
        raise NetworkError(f"layer {l0.name!r}: r = {l0.r} rows of p = {l0.p}: p * {eb} bytes must be a "
                           f"multiple of mem_bytes = {M}")

    # memory map
    a = 4 * M   # address 0 means "no bias"
    placed = []
    chunks = []
    for name, L, lidx, src, bbk, eid, final in order:
        ws = roundup(L.p * eb, M)
        w_addr = a
        wT = np.ascontiguousarray(np.asarray(weights[f"{name}:w"], dtype=np.int64).T)
        if wT.min() < cfg.data_min or wT.max() > cfg.data_max:
            raise NetworkError(f"weights: '{name}:w' has values outside {cfg.data_min}..{cfg.data_max}")
        chunks.append(("w", w_addr, ws, wT))
        a = roundup(a + L.c * ws, M)
        b_addr = 0
        if f"{name}:b" in weights:
            bias = np.asarray(weights[f"{name}:b"], dtype=np.int64)
            if bias.shape != (L.c,):
                raise NetworkError(f"weights: '{name}:b' has shape {bias.shape}, expected ({L.c},)")
            b_addr = a
            chunks.append(("b", b_addr, 0, bias))
            a = roundup(a + 4 * L.c, M)
        placed.append((name, L, lidx, src, bbk, eid, final, w_addr, b_addr))
    entries = []
    for name, L, lidx, src, bbk, eid, final, w_addr, b_addr in placed:
        ob = out_elem_bytes(cfg, OUT_RAW if L.mult is None else OUT_REQUANT)
        blk = L.r * roundup(L.c * ob, M)
        outs = []
        for _ in range(2):
            outs.append(a)
            a = roundup(a + cfg.b_max * blk, M)
        entries.append(NetEntry(name=name, layer=L, lid=lidx, src=src, backbone=bbk, exit_id=eid,
                                final=final, out=tuple(outs), blk=blk, w_addr=w_addr, b_addr=b_addr))
    n_inputs = 4 * cfg.b_max if n_inputs is None else n_inputs
    in_stride = roundup(l0.r * roundup(l0.p * eb, M), M)
    input_addr = a
    a = roundup(a + n_inputs * in_stride, M)
    res_bytes = max(roundup(4 * e.layer.c, M) for e in entries if e.exit_id is not None)
    res_shift = max(res_bytes - 1, 1).bit_length()
    tags = tag_space or (1 << min(cfg.tag_width, 12))
    res_addr = roundup(a, 1 << res_shift)
    size = roundup(res_addr + (tags << res_shift), M)
    if size > (1 << cfg.addr_width):
        raise NetworkError(f"memory image: {size} bytes do not fit addr_width = {cfg.addr_width}")
    mem = np.zeros(size, dtype=np.uint8)
    dt = "<i1" if eb == 1 else "<i2"
    for kind, addr, stride, arr in chunks:
        if kind == "w":
            by = arr.astype(dt).view(np.uint8).reshape(arr.shape[0], -1)
            for i in range(arr.shape[0]):
                mem[addr + i * stride: addr + i * stride + by.shape[1]] = by[i]
        else:
            mem[addr:addr + 4 * arr.size] = arr.astype("<i4").view(np.uint8)
    return NetworkProgram(cfg=cfg, model=model, entries=entries, thresholds=thresholds,
                          criteria=tuple(crit_codes), input_addr=input_addr, input_stride=in_stride,
                          n_inputs=n_inputs, res_addr=res_addr, res_shift=res_shift, mem=mem,
                          weights=dict(weights))


def _run_layer(cfg, L: GemmLayer, x_flat: np.ndarray, w, b) -> np.ndarray:
    x = np.asarray(x_flat, dtype=np.int64).reshape(L.r, L.p)
    om = OUT_RAW if L.mult is None else OUT_REQUANT
    return gemm_reference(cfg, x, np.asarray(w, dtype=np.int64), None if b is None else np.asarray(b),
                          out_mode=om, mult=L.mult or 1, shift=L.shift or 0, relu=L.relu)


def reference_sample(cfg: HwConfig, model: EEModel, weights: dict, thresholds, criteria, x,
                     head_names=None) -> dict:
    """Run one sample alone: ``{"exit": i, "cls": c, "logits": array, "top1", "top2"}``."""
    ne = len(model.exits)
    names = head_names or [exit_name(model, i) for i in range(ne)]
    crit = criteria if criteria is not None else ["margin"] * ne
    heads_after = {h.after: i for i, h in enumerate(model.exits)}
    h = np.asarray(x, dtype=np.int64).ravel()

    def decide(logits, i, final):
        s = np.sort(logits)
        top1 = int(s[-1])
        top2 = int(s[-2]) if logits.size > 1 else -(1 << 31)
        cls = int(np.argmax(logits))
        if final:
            ok = True
        elif crit[i] == "max":
            ok = top1 >= thresholds[i]
        else:
            ok = top1 - top2 >= thresholds[i]
        return ok, {"exit": i, "cls": cls, "logits": logits, "top1": top1, "top2": top2}

    for li, L in enumerate(model.layers):
        h = _run_layer(cfg, L, h, weights[f"{L.name}:w"], weights.get(f"{L.name}:b")).ravel()
        if li == len(model.layers) - 1:
            return decide(h, ne, True)[1]
        if li in heads_after:
            i = heads_after[li]
            z = h
            for H in model.exits[i].layers:
                key = f"{names[i]}.{H.name}"
                z = _run_layer(cfg, H, z, weights[f"{key}:w"], weights.get(f"{key}:b")).ravel()
            ok, res = decide(z, i, False)
            if ok:
                return res
    raise AssertionError("unreachable")


def random_network(cfg: HwConfig, rng: np.random.Generator, *, n_layers: int | None = None,
                   n_exits: int | None = None, classes: int = 6, name: str = "rand"):
    """A random small early-exit network that the FBE can run, with weights and thresholds
    picked so that each exit takes a fair share of samples. Returns
    ``(model, weights, thresholds, criteria)``."""
    from .workloads.model import ExitHead
    M = cfg.mem_bytes
    n_layers = n_layers or int(rng.integers(4, 9))
    n_exits = n_exits or int(rng.integers(1, 4))
    n_exits = min(n_exits, n_layers - 1)
    layers = []
    r0 = int(rng.choice([1, 2, 3]))
    p = M * int(rng.integers(1, 4)) if r0 > 1 else int(rng.integers(3, 40))
    r = r0
    for i in range(n_layers - 1):
        c = M * int(rng.integers(1, 4))
        layers.append(GemmLayer(f"l{i}", r=r, p=p, c=c, relu=True, mult=int(rng.integers(1, 4)),
                                shift=int(np.ceil(np.log2(p))) + int(rng.integers(4, 7))))
        if r > 1 and rng.random() < 0.4:      # flatten
            p, r = r * c, 1
        else:
            p = c
    layers.append(GemmLayer(f"l{n_layers - 1}", r=1, p=r * p, c=classes))
    afters = sorted(rng.choice(np.arange(n_layers - 1), size=n_exits, replace=False).tolist())
    exits = []
    for a in afters:
        La = layers[a]
        hl = [GemmLayer("fc", r=1, p=La.r * La.c, c=classes)]
        if rng.random() < 0.3:
            hl = [GemmLayer("pre", r=1, p=La.r * La.c, c=M, relu=True, mult=1, shift=7),
                  GemmLayer("fc", r=1, p=M, c=classes)]
        exits.append(ExitHead(after=a, layers=tuple(hl)))
    q = [1.0 / (n_exits + 1)] * (n_exits + 1)
    model = EEModel(name=name, layers=tuple(layers), exits=tuple(exits), exit_probs=tuple(q))
    weights = {}
    for L in layers:
        weights[f"{L.name}:w"] = rng.integers(-128, 128, (L.p, L.c))
        weights[f"{L.name}:b"] = rng.integers(-3000, 3000, L.c)
    for i, h in enumerate(exits):
        for H in h.layers:
            weights[f"exit{i}.{H.name}:w"] = rng.integers(-128, 128, (H.p, H.c))
            if rng.random() < 0.5:
                weights[f"exit{i}.{H.name}:b"] = rng.integers(-3000, 3000, H.c)
    crit = [str(rng.choice(["margin", "max"])) for _ in exits]
    xs = [rng.integers(-128, 128, (layers[0].r, layers[0].p)) for _ in range(40)]
    thresholds = _calibrate(cfg, model, weights, crit, xs)
    return model, weights, thresholds, crit


def _calibrate(cfg, model, weights, crit, xs):
    """Per exit, the median statistic of the samples that reach it (so about half leave)."""
    ne = len(model.exits)
    thr = [(1 << 31) - 1] * ne
    for i in range(ne):
        stats = []
        for x in xs:
            st = _exit_stat(cfg, model, weights, crit, x, i, thr)
            if st is not None:
                stats.append(st)
        thr[i] = int(np.median(stats)) if stats else 0
    return thr


def _exit_stat(cfg, model, weights, crit, x, i, thr):
    """The exit-i test statistic of sample ``x`` if it reaches exit ``i`` under ``thr``."""
    big = (1 << 31) - 1
    t = list(thr[:i]) + [big] * (len(thr) - i)
    r = reference_sample(cfg, model, weights, t, crit, x)
    if r["exit"] < i:
        return None
    names = [exit_name(model, k) for k in range(len(model.exits))]
    h = np.asarray(x, dtype=np.int64).ravel()
    for li, L in enumerate(model.layers[:model.exits[i].after + 1]):
        h = _run_layer(cfg, L, h, weights[f"{L.name}:w"], weights.get(f"{L.name}:b")).ravel()
    z = h
    for H in model.exits[i].layers:
        key = f"{names[i]}.{H.name}"
        z = _run_layer(cfg, H, z, weights[f"{key}:w"], weights.get(f"{key}:b")).ravel()
    s = np.sort(z)
    return int(s[-1]) if crit[i] == "max" else int(s[-1] - s[-2])
