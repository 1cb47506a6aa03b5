"""Hardware generator configuration: one frozen dataclass, validated in one place.

Variants are made with :meth:`HwConfig.replace` (or ``--set``, :meth:`HwConfig.with_overrides`),
which derive ``mem_bytes`` again when it was left to the array; ``dataclasses.replace``
keeps the width as it is. Derived values are properties.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["HwConfig", "ConfigError", "load_hw_config"]


class ConfigError(ValueError):
    """A configuration value breaks a rule; the message names field, value and rule."""


def _is_pow2(v: int) -> bool:
    return isinstance(v, int) and v > 0 and (v & (v - 1)) == 0


def _log2(v: int) -> int:
    return v.bit_length() - 1


@dataclass(frozen=True)
class HwConfig:
    """A parametrised NPU: ``tc`` PEs of ``tp`` lanes, tiles of ``tr`` rows.

    Buffer sizes are in elements per slot (each buffer is double-buffered).
    """

    tc: int = 8                 #: processing elements (T_C); 8 x 8 the default since 5 Dec 2026 (8 x 4 before)
    tp: int = 8                 #: lanes per PE (T_P)
    tr: int = 32                #: rows per input tile (T_R)
    data_width: int = 8         #: signed operand width, bits
    acc_width: int = 32         #: accumulator width, bits (wraps modulo 2**acc_width)
    x_buf_elems: int = 131072   #: input buffer, elements per slot (16-row tiles hold P = 8192)
    w_buf_elems: int = 32768    #: weight buffer, elements per slot (4096 per PE: P = 2304 at k = 1 in one chunk)
    #: memory port width, bytes per beat, at most ``tc`` elements (the X banking); None (the
    #: default): min(tc, tp) elements, at most 8 bytes and at least 4 (8 on the 8 x 8
    #: default, 4 on a 4 x 4 or 8 x 4). Beats wider than ``tp`` elements widen the W
    #: memories' words (:attr:`w_word_lines`)
    mem_bytes: int | None = None
    rd_outstanding: int = 32    #: read requests in flight at most
    stage_entries: int = 16     #: PE-array groups between issue and drain at most (stage FIFO)
    mult_width: int = 16        #: signed requantisation multiplier width, bits
    addr_width: int = 32        #: byte address width
    dim_width: int = 16         #: width of the R, P, C fields of a layer descriptor
    b_max: int = 16             #: FBE: samples in flight at most (batch slots)
    net_entries: int = 32       #: FBE: descriptor memory depth (layers of one network program)
    max_classes: int = 32       #: FBE exit unit: logits per exit head at most
    tag_width: int = 16         #: FBE: width of a sample's tag (the host's id for it)
    clock_mhz: float = 100.0    #: clock used to turn cycles into time

    def __post_init__(self):
        def bad(name, rule):
            raise ConfigError(f"hardware config: {name} = {getattr(self, name)!r}: {rule}")

        # mem_bytes None: derived from the array (see the field); remembered so that a
        # variant (``replace``, ``--set``) of another size derives it again
        auto = self.mem_bytes is None
        object.__setattr__(self, "_mem_auto", auto)
        if auto:
            ok = all(isinstance(getattr(self, n), int) and not isinstance(getattr(self, n), bool)
                     and getattr(self, n) > 0 for n in ("tc", "tp", "data_width"))
            # (4 when tc, tp or data_width is bad: their own checks below name them)
            object.__setattr__(self, "mem_bytes",
                               max(4, min(8, min(self.tc, self.tp) * self.elem_bytes)) if ok else 4)

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "clock_mhz":
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < float("inf"):
                    bad(f.name, "must be a finite positive number of MHz")
            elif not isinstance(v, int) or isinstance(v, bool):
                bad(f.name, "must be an integer")
        for name, hi in (("tc", 64), ("tp", 64), ("tr", 256)):
            if not _is_pow2(getattr(self, name)) or getattr(self, name) > hi:
                bad(name, f"must be a power of two from 1 to {hi}")
        if not 4 <= self.data_width <= 16:
            bad("data_width", "must be from 4 to 16 bits")
        if not 2 * self.data_width <= self.acc_width <= 32:
            bad("acc_width", f"must be from 2*data_width = {2 * self.data_width} to 32 bits")
        if not _is_pow2(self.mem_bytes) or not 4 <= self.mem_bytes <= 64:
            bad("mem_bytes", "must be a power of two from 4 to 64")
        if self.elems_per_beat > self.tc:
            if auto:
                raise ConfigError(
                    f"hardware config: tc = {self.tc}, tp = {self.tp}: the memory port is at "
                    f"least 4 bytes, {self.elems_per_beat} elements of {self.data_width} bits, and "
                    f"the buffer banking needs tc >= {self.elems_per_beat}")
            bad("mem_bytes", f"holds {self.elems_per_beat} elements per beat; the buffer banking "
                f"needs at most tc = {self.tc}")
        for name in ("x_buf_elems", "w_buf_elems"):
            v = getattr(self, name)
            if not _is_pow2(v) or v < self.tc * self.tp:
                bad(name, f"must be a power of two of at least tc*tp = {self.tc * self.tp}")
        if self.w_buf_elems < self.lanes * self.w_word_lines:
            bad("w_buf_elems", f"must hold a W memory word of {self.w_word_lines} lines per PE "
                f"(a beat of {self.elems_per_beat} elements over tp = {self.tp} lanes): at least "
                f"tc*tp*{self.w_word_lines} = {self.lanes * self.w_word_lines}")
        if self.x_buf_elems < self.tr * self.lanes:
            bad("x_buf_elems", f"must hold tc*tp elements of every tile row, tr*tc*tp = {self.tr * self.lanes}")
        if not 2 <= self.rd_outstanding <= 256:
            bad("rd_outstanding", "must be from 2 to 256")
        if not 2 <= self.stage_entries <= 64:
            bad("stage_entries", "must be from 2 to 64 groups")
        if not 4 <= self.mult_width <= 32:
            bad("mult_width", "must be from 4 to 32 bits")
        if not 16 <= self.addr_width <= 48:
            bad("addr_width", "must be from 16 to 48 bits")
        if not 8 <= self.dim_width <= 24:
            bad("dim_width", "must be from 8 to 24 bits")
        if not 1 <= self.b_max <= 64:
            bad("b_max", "must be from 1 to 64 samples")
        if not _is_pow2(self.net_entries) or not 2 <= self.net_entries <= 256:
            bad("net_entries", "must be a power of two from 2 to 256")
        if not 1 <= self.max_classes <= 1024:
            bad("max_classes", "must be from 1 to 1024")
        if not 4 <= self.tag_width <= 32:
            bad("tag_width", "must be from 4 to 32 bits")

    # -- derived values ---------------------------------------------------------------
    @property
    def elem_bytes(self) -> int:
        """Bytes one operand element takes in memory (sign-extended)."""
        return 1 if self.data_width <= 8 else 2

    @property
    def elems_per_beat(self) -> int:
        return self.mem_bytes // self.elem_bytes

    @property
    def lanes(self) -> int:
        return self.tc * self.tp

    @property
    def x_depth(self) -> int:
        """Lines per byte-wide X bank per slot."""
        return self.x_buf_elems // self.lanes

    @property
    def w_depth(self) -> int:
        """Lines (``tp`` elements each) per PE's W memory per slot."""
        return self.w_buf_elems // self.lanes

    @property
    def w_word_lines(self) -> int:
        """W lines in one word of a PE's W memory: 1, or ``E / tp`` when a beat holds more
        elements than a PE has lanes (its elements for one PE then span that many lines,
        aligned, so the memory takes them as one wide word write; docs/architecture.md,
        "Buffers")."""
        return max(1, self.elems_per_beat // self.tp)

    @property
    def bp_choices(self) -> tuple[int, ...]:
        return tuple(1 << i for i in range(_log2(self.tp) + 1))

    @property
    def k_choices(self) -> tuple[int, ...]:
        return tuple(1 << i for i in range(_log2(self.tc) + 1))

    @property
    def policies(self) -> tuple[tuple[int, int], ...]:
        """Every legal run-time datapath policy (B_P, k)."""
        return tuple((bp, k) for bp in self.bp_choices for k in self.k_choices)

    @property
    def data_min(self) -> int:
        return -(1 << (self.data_width - 1))

    @property
    def data_max(self) -> int:
        return (1 << (self.data_width - 1)) - 1

    @property
    def logit_beats(self) -> int:
        """Memory beats of the largest exit head's int32 logits."""
        return -(-4 * self.max_classes // self.mem_bytes)

    @property
    def tr_min(self) -> int:
        """Fewest rows of a tall row tile (:meth:`tile_rows`): enough that the weights,
        loaded again for every row tile, take at most half the port time of the compute
        (``tc*tp / (rows * elems_per_beat) <= 1/2``). As a beat holds at most ``tc`` elements,
        that is at least ``2 * tp`` rows: B_P groups stay full."""
        return min(self.tr, 2 * self.lanes // self.elems_per_beat)

    @property
    def tr_max(self) -> int:
        """Most rows of a row tile: ``2 * tr`` (the short-row tiles of :meth:`tile_rows`)
        when the X buffer holds that many rows of ``tc*tp`` elements, else ``tr``."""
        return 2 * self.tr if self.x_buf_elems >= 2 * self.tr * self.lanes else self.tr

    def tile_rows(self, P: int, k: int) -> int:
        """Rows of a row tile for a layer of reduction length ``P`` at stacking ``k``.

        ``tr``, or fewer (a power of two down to :attr:`tr_min`) when fewer rows let the X
        buffer hold all of P: then X is loaded once per row tile instead of once per column
        tile. If the W buffer cannot hold P at this stacking, P is chunked for W and X stays
        resident across the column tiles (:meth:`x_resident`: loaded chunk by chunk at the
        first column tile); only when no height down to ``tr_min`` lets X hold P is X
        chunked too, in tiles of ``tr`` rows, and loaded again for every column tile.

        Short rows (``P <= k*tp``: a row's reduction is one cycle of the stacked lanes) take
        :attr:`tr_max` rows. A step (one column tile of a row tile) then computes ``2*tr``
        cycles instead of ``tr``, enough to cover the next step's weight load round trip
        (two W slots: the load waits for the slot the step before frees, then the memory
        latency; MobileNetV2's 1 x 1 expansion, P = 32, at k = 8 on the 8 x 4: 0.78 -> 0.94
        of its roofline)."""
        if P <= k * self.tp and self.tr_max > self.tr:
            return self.tr_max
        rows = self.tr
        while rows > self.tr_min and P > self.x_buf_elems // rows:
            rows //= 2
        return rows if P <= self.x_buf_elems // rows else self.tr

    @staticmethod
    def row_tile_sizes(R: int, rows: int) -> tuple[int, ...]:
        """Rows of each row tile of an ``R``-row layer tiled at ``rows`` (:meth:`tile_rows`).

        Every tile is full but the last two: when the remainder ``rl = R - (n-1)*rows``
        is under half a tile, the last two tiles take ``rows/2`` and ``rows/2 + rl`` rows
        instead of ``rows`` and ``rl``. A tile of a row or two computes a column tile in a
        few cycles while the next column tile's weights take a whole load; balanced, each
        of the two computes at least half a full tile's cycles (ResNet-18's 49 x 2304 x 512
        on the 8 x 4: 49 = 16 + 16 + 8 + 9 instead of 16 + 16 + 16 + 1). The split keeps
        the tile count, the bytes moved and the array cycles (B_P and ``rows`` are powers of
        two, so the groups per tile add up the same); ``rows/2`` is a power of two, so the
        hardware's row offset stays a shift."""
        n = -(-R // rows)
        rl = R - (n - 1) * rows
        if n >= 2 and rl < rows // 2:
            return (rows,) * (n - 2) + (rows // 2, rows // 2 + rl)
        return (rows,) * (n - 1) + (rl,)

    def chunk_max(self, k: int, rows: int | None = None) -> int:
        """Longest reduction chunk (elements of P) the buffers hold at stacking ``k`` with
        row tiles of ``rows`` rows (``tr`` if not given)."""
        rows = self.tr if rows is None else rows
        return min(self.x_buf_elems // rows, (self.w_buf_elems // self.tc) * k)

    def x_resident(self, P: int, k: int) -> bool:
        """The layer is chunked (the W buffer cannot hold P at stacking ``k``) but X is
        not: its row tile (:meth:`tile_rows` rows) holds all of P, so X is loaded once per
        row tile, a chunk at a time at the first column tile's steps, and stays for the
        other column tiles (docs/architecture.md, "Tiling"). When chunked X was loaded
        again for every column tile, k times the compute's port time at ``E = tp``:
        ResNet-18's conv5_x at (1, 1) on the 8 x 8 reached 0.75 of its roofline."""
        rows = self.tile_rows(P, k)
        return P > self.chunk_max(k, rows) and P <= self.x_buf_elems // rows

    def chunk_sizes(self, P: int, k: int, rows: int | None = None) -> tuple[int, ...]:
        """Reduction elements of each chunk of a layer of reduction length ``P`` at stacking
        ``k`` with row tiles of ``rows`` rows (``tr`` if not given).

        Every chunk is :meth:`chunk_max` long but the last two: when the remainder
        ``rl = P - (n-1)*cm`` is under half a chunk, they take ``cm/2`` and ``cm/2 + rl``
        instead of ``cm`` and ``rl`` (when ``cm/2`` is still a whole number of cycles of
        the widest unit, ``tp*k`` lanes, and of beats). A short last chunk computes in a few
        cycles while the next column tile's first chunk loads a whole one: ResNet-18's
        conv5_x (P = 4608) on the 16 x 8 with a 16-byte port ran chunks of 2048, 2048 and
        512, and stalled a fifth of its cycles on those loads (0.794 of its roofline). The
        split keeps the chunk count and the bytes moved (``cm/2`` is a multiple of the
        beat), and ``cm/2`` is a power of two, so the hardware's chunk offsets stay shifts
        (``hw/steps.py``)."""
        cm = self.chunk_max(k, rows)
        n = -(-P // cm)
        rl = P - (n - 1) * cm
        if n >= 2 and rl < cm // 2 and self.chunk_balances(k, rows):
            return (cm,) * (n - 2) + (cm // 2, cm // 2 + rl)
        return (cm,) * (n - 1) + (rl,)

    def chunk_balances(self, k: int, rows: int | None = None) -> bool:
        """Half a chunk is a whole number of cycles of ``tp*k`` lanes and of beats (the
        condition for :meth:`chunk_sizes` to balance the last two chunks)."""
        return self.chunk_max(k, rows) >= 2 * max(self.tp * k, self.elems_per_beat)

    def ns_per_cycle(self) -> float:
        return 1e3 / self.clock_mhz

    def key(self) -> str:
        """A short stable string identifying the elaborated hardware (for build caches)."""
        vals = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "clock_mhz"]
        return ",".join(vals)

    @property
    def mem_bytes_derived(self) -> bool:
        """``mem_bytes`` was derived from the array (not given): a consumer with a fixed bus
        width may choose it (``fluidnpu board build`` takes 4 bytes)."""
        return self._mem_auto

    def replace(self, **changes) -> "HwConfig":
        """A variant; a derived ``mem_bytes`` is derived again unless ``changes`` set it."""
        if self._mem_auto and "mem_bytes" not in changes:
            changes = {**changes, "mem_bytes": None}
        return dataclasses.replace(self, **changes)

    def with_overrides(self, items: list[str]) -> "HwConfig":
        """Apply ``name=value`` strings (from ``--set``)."""
        names = {f.name: f for f in fields(self)}
        changes = {}
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected name=value")
            name, _, text = item.partition("=")
            name = name.strip()
            if name not in names:
                raise ConfigError(f"--set {name}: unknown field; allowed: {', '.join(names)}")
            try:
                changes[name] = float(text) if name == "clock_mhz" else int(text, 0)
            except ValueError:
                raise ConfigError(f"--set {name}={text!r}: not a number") from None
        return self.replace(**changes)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "HwConfig":
        hw = d.get("hw", d)
        if not isinstance(hw, dict):
            raise ConfigError(f"{source}: [hw] must be a table")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(hw) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**hw)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def load_hw_config(path: str | Path | None) -> HwConfig:
    """Load a TOML file (fields at top level or under ``[hw]``); ``None`` gives the default."""
    if path is None:
        return HwConfig()
    from fluidnpu.textfiles import TextFileError, read_text
    p = Path(path)
    try:
        text = read_text(p)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None
    except TextFileError as e:
        raise ConfigError(str(e)) from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return HwConfig.from_dict(d, str(p))
