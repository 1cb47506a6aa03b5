"""SCALE-Sim style topology CSVs: convolution and GEMM rows lowered to GemmLayers.

Convolution row (SCALE-Sim columns, then two optional fluidnpu columns)::

    Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides[, Padding[, Groups]]

GEMM row (SCALE-Sim GEMM mode: an ``M x K`` matrix times a ``K x N`` matrix)::

    Layer, M, N, K

A convolution lowers by im2col to ``r = OH * OW`` (output pixels per sample),
``p = Fh * Fw * Channels / Groups``, ``c = Num Filter``; a GEMM row to ``r = M``,
``p = K``, ``c = N``. Without a Padding column the SCALE-Sim convention holds: the
IFMAP is used as given (no padding), ``out = (ifmap - filter) // stride + 1``.
``Padding`` is an integer number of zero rows/columns added on each side, ``valid``
(= 0) or ``same`` (``out = ceil(ifmap / stride)``). See docs/models.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import WorkloadError
from .model import GemmLayer

__all__ = ["ConvSpec", "GemmSpec", "CONV_COLUMNS", "GEMM_COLUMNS", "conv_output_size",
           "parse_topology_text", "read_topology", "parse_topology", "format_topology",
           "write_topology"]

CONV_COLUMNS = ("Layer name", "IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width",
                "Channels", "Num Filter", "Strides")
CONV_OPTIONAL = ("Padding", "Groups")
GEMM_COLUMNS = ("Layer", "M", "N", "K")
_INT = re.compile(r"[+-]?\d+\Z")


def conv_output_size(ifmap: int, filt: int, stride: int, padding: int | str = 0) -> int:
    """Output size along one dimension; ``padding`` is per side, or 'same'/'valid'."""
    if padding == "same":
        return -(-ifmap // stride)
    pad = 0 if padding == "valid" else int(padding)
    return (ifmap + 2 * pad - filt) // stride + 1


@dataclass(frozen=True)
class ConvSpec:
    """One convolution row, as written in the file."""
    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filter: int
    stride: int
    padding: int | str = 0      #: per side; or "same" / "valid"
    groups: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return (conv_output_size(self.ifmap_h, self.filter_h, self.stride, self.padding),
                conv_output_size(self.ifmap_w, self.filter_w, self.stride, self.padding))

    def to_layer(self) -> GemmLayer:
        oh, ow = self.out_hw
        return GemmLayer(self.name, r=oh * ow, p=self.filter_h * self.filter_w * (self.channels // self.groups),
                         c=self.num_filter, kind="conv", groups=self.groups)

    def cells(self, extended: bool) -> list[str]:
        out = [self.name] + [str(v) for v in (self.ifmap_h, self.ifmap_w, self.filter_h, self.filter_w,
                                              self.channels, self.num_filter, self.stride)]
        return out + [str(self.padding), str(self.groups)] if extended else out


@dataclass(frozen=True)
class GemmSpec:
    """One GEMM row: ``M x K`` times ``K x N``."""
    name: str
    m: int
    n: int
    k: int

    def to_layer(self) -> GemmLayer:
        return GemmLayer(self.name, r=self.m, p=self.k, c=self.n, kind="gemm")

    def cells(self, extended: bool = False) -> list[str]:
        return [self.name, str(self.m), str(self.n), str(self.k)]


def _split(line: str) -> list[str]:
    cells = [c.strip() for c in line.split(",")]
    while cells and cells[-1] == "":
        cells.pop()          # SCALE-Sim rows end with a comma
    return cells


class _Parser:
    def __init__(self, source):
        self.source = source
        self.mode = None          # None (per row), "conv" or "gemm"
        self.gemm_order = ("m", "n", "k")
        self.seen: dict[str, int] = {}

    def err(self, lineno, field, value, problem):
        return WorkloadError.at(self.source, field, value, problem, line=lineno)

    def header(self, cells, lineno):
        names = [c.lower() for c in cells[1:]]
        if sorted(names) == ["k", "m", "n"]:
            self.mode, self.gemm_order = "gemm", tuple(names)
        elif len(names) >= len(CONV_COLUMNS) - 1 and len(names) <= len(CONV_COLUMNS) + 1:
            self.mode = "conv"
        else:
            raise self.err(lineno, "header", ",".join(cells),
                           f"not a known header; use '{', '.join(CONV_COLUMNS)}' "
                           f"(optionally '{', '.join(CONV_OPTIONAL)}') or '{', '.join(GEMM_COLUMNS)}'")

    def pos_int(self, lineno, field, cell, minimum=1):
        if not _INT.match(cell) or int(cell) < minimum:
            rule = "a positive integer (>= 1)" if minimum == 1 else f"an integer >= {minimum}"
            raise self.err(lineno, field, cell, f"must be {rule}")
        return int(cell)

    def row(self, cells, lineno):
        name = cells[0]
        if not name:
            raise self.err(lineno, "Layer name", name, "must not be empty")
        if name in self.seen:
            raise self.err(lineno, "Layer name", name, f"already used on line {self.seen[name]}; names must be unique")
        n = len(cells) - 1
        mode = self.mode or ("gemm" if n == 3 else "conv" if 7 <= n <= 9 else None)
        if mode == "gemm" and n != 3 or mode == "conv" and not 7 <= n <= 9 or mode is None:
            need = {"gemm": "3 (M, N, K)", "conv": "7 (IFMAP Height .. Strides), 8 with Padding or 9 with Groups",
                    None: "3 for a GEMM row (M, N, K) or 7 to 9 for a convolution row"}[mode]
            raise self.err(lineno, "columns", n, f"row has {n} values after the layer name; needs {need}")
        self.seen[name] = lineno
        if mode == "gemm":
            vals = {k: self.pos_int(lineno, k.upper(), c) for k, c in zip(self.gemm_order, cells[1:])}
            return GemmSpec(name, vals["m"], vals["n"], vals["k"])
        v = [self.pos_int(lineno, f, c) for f, c in zip(CONV_COLUMNS[1:], cells[1:8])]
        pad = cells[8].lower() if n >= 8 and cells[8] else 0
        if pad not in (0, "same", "valid"):
            if not _INT.match(pad) or int(pad) < 0:
                raise self.err(lineno, "Padding", cells[8],
                               "must be an integer >= 0 (per side), 'same' or 'valid'")
            pad = int(pad)
        groups = self.pos_int(lineno, "Groups", cells[9]) if n == 9 and cells[9] else 1
        spec = ConvSpec(name, *v, padding=pad, groups=groups)
        self.check_conv(spec, lineno)
        return spec

    def check_conv(self, s: ConvSpec, lineno):
        if s.padding != "same":
            pad = 0 if s.padding == "valid" else s.padding
            for fld, f, i in (("Filter Height", s.filter_h, s.ifmap_h), ("Filter Width", s.filter_w, s.ifmap_w)):
                if f > i + 2 * pad:
                    what = f"IFMAP {fld.split()[1]} {i}" + (f" + 2 * padding {pad}" if pad else "")
                    raise self.err(lineno, fld, str(f), f"larger than the {what}; must be at most {i + 2 * pad}")
        for fld, v in (("Channels", s.channels), ("Num Filter", s.num_filter)):
            if v % s.groups:
                raise self.err(lineno, "Groups", str(s.groups), f"must divide {fld} = {v}")


def parse_topology_text(text: str, source="<text>") -> list[ConvSpec | GemmSpec]:
    """Parse topology CSV text into row specs; errors name ``source`` and the line."""
    p = _Parser(source)
    rows: list[ConvSpec | GemmSpec] = []
    first = True
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = _split(line)
        if first:
            first = False
            if len(cells) > 1 and not any(_INT.match(c) for c in cells[1:]):
                p.header(cells, lineno)
                continue
        rows.append(p.row(cells, lineno))
    if not rows:
        raise WorkloadError(f"{source}: has no layer rows", file=source, field="rows", value=0)
    return rows


def read_topology(path) -> list[ConvSpec | GemmSpec]:
    """Read a topology CSV file into row specs."""
    from fluidnpu.textfiles import TextFileError, read_text
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read topology file: {e.strerror or e}", file=path) from None
    except TextFileError as e:
        raise WorkloadError(str(e), file=path) from None
    return parse_topology_text(text, source=path)


def parse_topology(path) -> tuple[GemmLayer, ...]:
    """Read a topology CSV file and lower every row to a GemmLayer."""
    return tuple(r.to_layer() for r in read_topology(path))


def format_topology(rows) -> str:
    """CSV text for row specs (inverse of :func:`parse_topology_text`)."""
    rows = list(rows)
    convs = [r for r in rows if isinstance(r, ConvSpec)]
    ext = any(r.padding != 0 or r.groups != 1 for r in convs)
    if not convs:
        head = [", ".join(GEMM_COLUMNS) + ","]
    elif len(convs) == len(rows):
        head = [", ".join(CONV_COLUMNS + (CONV_OPTIONAL if ext else ())) + ","]
    else:
        head = ["# mixed rows: 3 values = GEMM (M, N, K), 7-9 values = convolution"]
    return "\n".join(head + [", ".join(r.cells(ext)) + "," for r in rows]) + "\n"


def write_topology(rows, path) -> None:
    """Write row specs to a topology CSV file (whole or not at all)."""
    from fluidnpu.outputs import atomic_write
    atomic_write(path, format_topology(rows))
