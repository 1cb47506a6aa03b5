"""Host side of the core's memory layout (docs/architecture.md, "Memory layout").

A :class:`GemmImage` is one layer's byte memory as the host prepares it: X, W stored
transposed, the optional int32 bias and the output region O, each starting at an
``M``-aligned address (``M = cfg.mem_bytes``), every row padded to a multiple of ``M``
bytes. Bytes that belong to no element (row padding, gaps, O before the core writes it)
are filled with seeded pseudo-random garbage, so a core that uses padding lanes, or
misses an output element, is caught.

:func:`pack_desc` / :func:`unpack_desc` turn layer descriptor fields into the integer
the core's ``cmd`` stream carries, through the Amaranth layout itself
(:func:`fluidnpu.hw.interface.layer_desc_layout`), so bit offsets live in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import HwConfig
from .interface import OUT_RAW, OUT_REQUANT, layer_desc_layout, log2

__all__ = ["DescError", "GemmImage", "gemm_image", "pack_desc", "unpack_desc", "desc_fields",
           "compulsory_traffic", "compulsory_bytes", "roundup", "out_elem_bytes"]


class DescError(ValueError):
    """A layer descriptor or layer operand breaks a rule; the message names field and value."""


def roundup(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def out_elem_bytes(cfg: HwConfig, out_mode: int) -> int:
    """Bytes per output element: 4 for raw accumulators, ``elem_bytes`` for requantised."""
    if out_mode == OUT_RAW:
        return 4
    if out_mode == OUT_REQUANT:
        return cfg.elem_bytes
    raise DescError(f"out_mode = {out_mode!r}: must be OUT_RAW (0) or OUT_REQUANT (1)")


# -- descriptors -----------------------------------------------------------------------

_DESC_DEFAULTS = {"mult": 1}


def _field_range(shape) -> tuple[int, int]:
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def pack_desc(cfg: HwConfig, **fields) -> int:
    """Pack a layer descriptor into the integer carried by ``cmd.payload``.

    Fields are those of :func:`layer_desc_layout` (``r, p, c, x_addr, w_addr, b_addr,
    o_addr, log2_bp, log2_k, bias_en, out_mode, relu, mult, shift``); missing ones are 0,
    except ``mult`` which defaults to 1. Every value is checked against its field's
    width and the rules of the spec (non-zero dimensions, ``M``-aligned addresses, legal
    policy); a :class:`DescError` names the field and value.
    """
    layout = layer_desc_layout(cfg)
    names = [name for name, _ in layout]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise DescError(f"descriptor: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
    vals = {}
    for name, field in layout:
        v = fields.get(name, _DESC_DEFAULTS.get(name, 0))
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        if isinstance(v, np.integer):
            v = int(v)
        if not isinstance(v, int):
            raise DescError(f"descriptor: {name} = {v!r}: must be an integer")
        lo, hi = _field_range(field.shape)
        if not lo <= v <= hi:
            raise DescError(f"descriptor: {name} = {v}: out of range {lo}..{hi} "
                            f"({field.shape} field)")
        vals[name] = v
    for name in ("r", "p", "c"):
        if vals[name] < 1:
            raise DescError(f"descriptor: {name} = {vals[name]}: a dimension must be at least 1")
    for name in ("x_addr", "w_addr", "b_addr", "o_addr"):
        if vals[name] % cfg.mem_bytes:
            raise DescError(f"descriptor: {name} = {vals[name]:#x}: must be a multiple of "
                            f"mem_bytes = {cfg.mem_bytes}")
    if vals["log2_bp"] > log2(cfg.tp):
        raise DescError(f"descriptor: log2_bp = {vals['log2_bp']}: B_P = {1 << vals['log2_bp']} "
                        f"exceeds tp = {cfg.tp}")
    if vals["log2_k"] > log2(cfg.tc):
        raise DescError(f"descriptor: log2_k = {vals['log2_k']}: k = {1 << vals['log2_k']} "
                        f"exceeds tc = {cfg.tc}")
    value = layout.const(vals).as_value().value
    return int(value)


def unpack_desc(cfg: HwConfig, value: int) -> dict[str, int]:
    """Inverse of :func:`pack_desc`: the descriptor's fields (``mult`` signed)."""
    layout = layer_desc_layout(cfg)
    if not 0 <= int(value) < (1 << layout.size):
        raise DescError(f"descriptor value {value:#x} does not fit in {layout.size} bits")
    c = layout.from_bits(int(value))
    return {name: int(c[name]) for name, _ in layout}


def desc_fields(*, bp: int = 1, k: int = 1, cfg: HwConfig | None = None) -> dict[str, int]:
    """``log2_bp`` / ``log2_k`` for a policy ``(B_P, k)``, checked against ``cfg`` if given."""
    for name, v, choices in (("bp", bp, cfg.bp_choices if cfg else None),
                             ("k", k, cfg.k_choices if cfg else None)):
        if not isinstance(v, (int, np.integer)) or v < 1 or (v & (v - 1)):
            raise DescError(f"policy: {name} = {v!r}: must be a power of two")
        if choices is not None and v not in choices:
            raise DescError(f"policy: {name} = {v}: legal values are {', '.join(map(str, choices))}")
    return {"log2_bp": log2(int(bp)), "log2_k": log2(int(k))}


# -- the memory image ------------------------------------------------------------------

@dataclass
class GemmImage:
    """One layer's memory image and where its arrays are (all addresses in bytes)."""

    cfg: HwConfig
    R: int
    P: int
    C: int
    out_mode: int
    bias_en: bool
    x_addr: int
    w_addr: int
    b_addr: int
    o_addr: int
    x_stride: int     #: bytes per X row (and per stored-W row): roundup(P*eb, M)
    w_stride: int
    o_stride: int     #: bytes per O row: roundup(C*ob, M)
    ob: int           #: bytes per output element
    mem: np.ndarray   #: the initial memory, uint8

    @property
    def size(self) -> int:
        return int(self.mem.size)

    def desc_dict(self, *, mult: int = 1, shift: int = 0, relu: bool = False,
                  bp: int = 1, k: int = 1) -> dict[str, int]:
        d = dict(r=self.R, p=self.P, c=self.C, x_addr=self.x_addr, w_addr=self.w_addr,
                 b_addr=self.b_addr, o_addr=self.o_addr, bias_en=int(self.bias_en),
                 out_mode=int(self.out_mode), relu=int(bool(relu)), mult=int(mult),
                 shift=int(shift))
        d.update(desc_fields(bp=bp, k=k, cfg=self.cfg))
        return d

    def desc(self, **kw) -> int:
        """The packed descriptor for this image (``mult, shift, relu, bp, k``)."""
        return pack_desc(self.cfg, **self.desc_dict(**kw))

    def _out_index(self) -> np.ndarray:
        """Byte addresses of O's element bytes, shape (R, C, ob)."""
        r = np.arange(self.R)[:, None, None]
        c = np.arange(self.C)[None, :, None]
        b = np.arange(self.ob)[None, None, :]
        return self.o_addr + r * self.o_stride + c * self.ob + b

    def out_mask(self) -> np.ndarray:
        """Boolean mask over the memory: True at the bytes the core may write."""
        m = np.zeros(self.size, dtype=bool)
        m[self._out_index().ravel()] = True
        return m

    def read_out(self, mem: np.ndarray) -> np.ndarray:
        """O read back from a memory image: int64 (R, C), sign-extended from ``ob`` bytes."""
        mem = np.asarray(mem, dtype=np.uint8)
        if mem.size < self.size:
            raise ValueError(f"memory image has {mem.size} bytes; the layout needs {self.size}")
        raw = mem[self._out_index()].astype(np.int64)           # (R, C, ob)
        weights = np.int64(1) << (8 * np.arange(self.ob, dtype=np.int64))
        u = (raw * weights).sum(axis=-1)
        sign = np.int64(1) << (8 * self.ob - 1)
        return (u ^ sign) - sign

    def write_out(self, mem: np.ndarray, values: np.ndarray) -> None:
        """Store ``values`` (R, C) into O of ``mem`` as the core would (host-side model)."""
        v = np.asarray(values, dtype=np.int64).reshape(self.R, self.C)
        shifts = 8 * np.arange(self.ob, dtype=np.int64)
        b = ((v[:, :, None] >> shifts) & 0xFF).astype(np.uint8)
        mem[self._out_index()] = b

    def untouched_violations(self, mem_after: np.ndarray, limit: int = 8) -> list[int]:
        """Addresses outside O's elements whose bytes differ from the initial image."""
        mem_after = np.asarray(mem_after, dtype=np.uint8)
        if mem_after.shape != self.mem.shape:
            raise ValueError(f"memory image of {mem_after.size} bytes, expected {self.size}")
        diff = (mem_after != self.mem) & ~self.out_mask()
        return [int(a) for a in np.flatnonzero(diff)[:limit]]


def _check_operand(name: str, a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise DescError(f"{name}: dtype {a.dtype} is not an integer type")
    a = a.astype(np.int64)
    if a.size and (a.min() < lo or a.max() > hi):
        bad = a[(a < lo) | (a > hi)].ravel()[0]
        raise DescError(f"{name}: value {int(bad)} out of range {lo}..{hi}")
    return a


def gemm_image(cfg: HwConfig, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
               *, out_mode: int = OUT_RAW, base: int = 0, gap: int = 0, tail: int = 0,
               seed: int = 0) -> GemmImage:
    """Lay out one layer ``O[R x C] = X[R x P] . W[P x C] (+ bias)`` in a byte memory.

    Regions, in this order from ``base`` (rounded up to ``M``): X, W (transposed), bias
    (only when given), O; ``gap`` bytes (rounded up to ``M``) separate them and ``tail``
    bytes follow O. Every other byte holds pseudo-random garbage from ``seed``.
    """
    M = cfg.mem_bytes
    eb = cfg.elem_bytes
    x = _check_operand("x", x, cfg.data_min, cfg.data_max)
    w = _check_operand("w", w, cfg.data_min, cfg.data_max)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise DescError(f"shapes: x {x.shape} and w {w.shape} must be (R, P) and (P, C)")
    R, P = x.shape
    C = w.shape[1]
    dmax = (1 << cfg.dim_width) - 1
    for name, v in (("R", R), ("P", P), ("C", C)):
        if not 1 <= v <= dmax:
            raise DescError(f"shapes: {name} = {v}: must be from 1 to {dmax} (dim_width = {cfg.dim_width})")
    if bias is not None:
        bias = _check_operand("bias", bias, -(1 << 31), (1 << 31) - 1)
        if bias.shape != (C,):
            raise DescError(f"bias: shape {bias.shape}, expected ({C},)")
    ob = out_elem_bytes(cfg, out_mode)
    for name, v in (("base", base), ("gap", gap), ("tail", tail)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise DescError(f"layout: {name} = {v!r}: must be a non-negative integer")

    xs = roundup(P * eb, M)
    ws = roundup(P * eb, M)
    os_ = roundup(C * ob, M)
    g = roundup(gap, M)
    a = roundup(base, M)
    x_addr = a
    a = roundup(x_addr + R * xs, M) + g
    w_addr = a
    a = roundup(w_addr + C * ws, M) + g
    if bias is not None:
        b_addr = a
        a = roundup(b_addr + 4 * C, M) + g
    else:
        b_addr = 0
    o_addr = a
    size = roundup(o_addr + R * os_ + tail, M)
    if size > (1 << cfg.addr_width):
        raise DescError(f"layout: {size} bytes do not fit the {cfg.addr_width}-bit address space")

    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, size=size, dtype=np.uint8)
    edt = np.dtype("<i1") if eb == 1 else np.dtype("<i2")

    def put_rows(addr: int, stride: int, rows: np.ndarray):
        by = rows.astype(edt).view(np.uint8).reshape(rows.shape[0], -1)
        for i in range(rows.shape[0]):
            mem[addr + i * stride: addr + i * stride + by.shape[1]] = by[i]

    put_rows(x_addr, xs, x)
    put_rows(w_addr, ws, np.ascontiguousarray(w.T))
    if bias is not None:
        mem[b_addr: b_addr + 4 * C] = bias.astype("<i4").view(np.uint8)
    return GemmImage(cfg=cfg, R=R, P=P, C=C, out_mode=out_mode, bias_en=bias is not None,
                     x_addr=x_addr, w_addr=w_addr, b_addr=b_addr, o_addr=o_addr,
                     x_stride=xs, w_stride=ws, o_stride=os_, ob=ob, mem=mem)


# -- roofline --------------------------------------------------------------------------

def compulsory_traffic(cfg: HwConfig, R: int, P: int, C: int, bias: bool = False,
                       out_mode: int = OUT_RAW) -> tuple[int, int]:
    """``(read_bytes, write_bytes)`` moved at least once, in whole ``M``-byte beats.

    Every X and W row is read once (its padded stride), the bias once, every O row
    written once (write beats count whole, although strobes cover only the elements).
    """
    M = cfg.mem_bytes
    eb = cfg.elem_bytes
    ob = out_elem_bytes(cfg, out_mode)
    rd = R * roundup(P * eb, M) + C * roundup(P * eb, M) + (roundup(4 * C, M) if bias else 0)
    wr = R * roundup(C * ob, M)
    return rd, wr


def compulsory_bytes(cfg: HwConfig, R: int, P: int, C: int, bias: bool = False,
                     out_mode: int = OUT_RAW) -> int:
    """Total compulsory memory traffic of a layer, bytes (see :func:`compulsory_traffic`)."""
    rd, wr = compulsory_traffic(cfg, R, P, C, bias, out_mode)
    return rd + wr
