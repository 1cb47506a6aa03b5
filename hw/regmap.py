"""The register map of the bus-wrapped NPU: one description, from which the CSR slave's
decoding (:mod:`.csr`), docs/registers.md, the C header and the Python module
(:mod:`.regmap_render`) are all made.

Registers are 32 bits wide at byte addresses (4-byte aligned), as a host driver reaching
them through a bridge (LiteX's UARTBone: 32-bit reads and writes) sees them. A *window*
is a group of registers that shows one of the hardware's port structures (a layer
descriptor, an FBE program entry, a result, an event) field by field: every field sits
in one register (fields are packed in layout order; a field that does not fit in the
current register's free bits starts the next one; a field wider than 32 bits is split
into 32-bit parts ``<field>`` (bits 31:0), ``<field>_1`` (bits 63:32), ...). Field
widths follow the :class:`~.config.HwConfig`, so the map is generated per configuration.

Command streams are *pushed* (write the window, then write its bit in ``PUSH``) and
result streams *popped* (read the window while its ``*_VALID`` status bit is 1, then
write its bit in ``POP``): no register read has a side effect, so a bridge may retry
reads safely.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from amaranth.lib import data

from .config import HwConfig
from .fbe_layout import (EVENT_NAMES, MODE_NAMES, REFUSE_NAMES, admit_layout, event_layout,
                         prog_write_layout, result_layout, status_layout, table_write_layout)
from .interface import layer_desc_layout

__all__ = ["Field", "Register", "Window", "RegMap", "regmap", "REGMAP_VERSION", "ID_VALUE",
           "CSR_ADDR_WIDTH", "TOPS"]

#: bumped whenever the map's layout rules or fixed registers change
REGMAP_VERSION = 1
#: the ``ID`` register's value: "FNPU" in ASCII
ID_VALUE = 0x464E5055
#: word-address bits of the CSR slave (a 4 KiB region)
CSR_ADDR_WIDTH = 10
#: the wrapped tops and their code in ``VERSION.TOP``
TOPS = {"core": 0, "npu": 1}

ACCESS = ("ro", "rw", "wo")


@dataclass(frozen=True)
class Field:
    """``width`` bits at ``lsb`` of a register; ``signed``: two's complement; ``codes``:
    the named values of an enumerated field, ``(name, value)`` pairs."""

    name: str
    lsb: int
    width: int
    desc: str = ""
    signed: bool = False
    codes: tuple[tuple[str, int], ...] = ()

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


@dataclass(frozen=True)
class Register:
    """One 32-bit register at byte ``offset``.

    ``access``: ``ro`` (writes ignored), ``rw`` (reads return what was written, masked to
    the fields), ``wo`` (reads return 0; a write acts once, as ``effect`` says). ``reset``:
    the value after reset (for ``ro`` registers showing hardware state, the value right
    after reset).
    """

    name: str
    offset: int
    access: str
    desc: str
    fields: tuple[Field, ...]
    reset: int = 0
    effect: str = ""
    window: str | None = None

    def __post_init__(self):
        if self.access not in ACCESS:
            raise ValueError(f"register {self.name}: access = {self.access!r}: must be one of {ACCESS}")
        if self.offset % 4:
            raise ValueError(f"register {self.name}: offset {self.offset:#x} is not 4-byte aligned")
        used = 0
        for f in self.fields:
            if f.lsb < 0 or f.width < 1 or f.lsb + f.width > 32:
                raise ValueError(f"register {self.name}: field {f.name} bits {f.lsb}+{f.width} outside 31:0")
            if used & f.mask:
                raise ValueError(f"register {self.name}: field {f.name} overlaps another field")
            used |= f.mask
            for code, v in f.codes:
                if not 0 <= v < 1 << f.width:
                    raise ValueError(f"register {self.name}: field {f.name} code {code} = {v} "
                                     f"does not fit its {f.width} bits")
        if self.reset & ~used:
            raise ValueError(f"register {self.name}: reset {self.reset:#x} sets bits outside its fields")

    @property
    def mask(self) -> int:
        m = 0
        for f in self.fields:
            m |= f.mask
        return m


@dataclass(frozen=True)
class Part:
    """Where bits ``[bit, bit + width)`` of a window's packed structure sit: register
    ``reg`` (byte offset), bits ``lsb`` up."""


    field: str          #: the register field's name
    source: str         #: the structure field's (flattened) name
    bit: int            #: offset in the packed structure
    reg: int
    lsb: int
    width: int
    signed: bool


@dataclass(frozen=True)
class Window:
    """A port structure shown in registers ``regs`` (byte offsets); ``kind``: ``push``
    (rw registers, sent by a ``PUSH`` bit), ``live`` (rw registers the hardware reads all
    the time), ``pop`` (ro, the head of a stream, removed by a ``POP`` bit) or ``view``
    (ro, live state)."""

    name: str
    kind: str
    size: int                       #: bits of the packed structure
    parts: tuple[Part, ...]
    regs: tuple[int, ...]
    bit: int | None = None          #: its bit in PUSH / POP


@dataclass(frozen=True)
class RegMap:
    """The map of one wrapped top (``core`` or ``npu``) for one configuration."""

    top: str
    cfg: HwConfig
    registers: tuple[Register, ...]
    windows: tuple[Window, ...] = field(default=())

    def __post_init__(self):
        seen: dict[int, str] = {}
        for r in self.registers:
            if r.offset in seen:
                raise ValueError(f"register map: {r.name} and {seen[r.offset]} share offset {r.offset:#x}")
            if r.offset >= 4 << CSR_ADDR_WIDTH:
                raise ValueError(f"register map: {r.name} at {r.offset:#x} outside the "
                                 f"{4 << CSR_ADDR_WIDTH}-byte CSR region")
            seen[r.offset] = r.name

    def __getitem__(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(name)

    def window(self, name: str) -> Window:
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(name)

    def at(self, offset: int) -> Register:
        for r in self.registers:
            if r.offset == offset:
                return r
        raise KeyError(offset)


# -- building --------------------------------------------------------------------------

def _flat(layout: data.StructLayout, prefix: str = "", base: int = 0):
    """``(name, offset, width, signed)`` of a struct's leaf fields, nested structs flattened
    with ``_``-joined names."""
    for name, f in layout:
        shape = f.shape
        full = f"{prefix}{name}"
        if isinstance(shape, data.StructLayout):
            yield from _flat(shape, full + "_", base + f.offset)
        else:
            yield full, base + f.offset, f.width, bool(getattr(shape, "signed", False))


class _Builder:
    def __init__(self):
        self.regs: list[Register] = []
        self.windows: list[Window] = []

    def reg(self, name, offset, access, desc, fields, reset=0, effect="", window=None):
        self.regs.append(Register(name, offset, access, desc, tuple(fields), reset, effect, window))

    def window(self, name: str, layout: data.StructLayout, offset: int, kind: str, desc: str,
               bit: int | None = None, field_desc: dict | None = None,
               field_codes: dict | None = None) -> int:
        """Lay ``layout`` out in registers from ``offset``; return the next free offset.
        ``field_codes``: structure field -> its named values (:attr:`Field.codes`)."""
        field_desc, field_codes = field_desc or {}, field_codes or {}
        access = "rw" if kind in ("push", "live") else "ro"
        parts: list[Part] = []
        per_reg: dict[int, list[Field]] = {}
        reg, used = offset, 0
        for src, bit0, width, signed in _flat(layout):
            chunks = [(i, min(32, width - i)) for i in range(0, width, 32)]
            if len(chunks) > 1 or used + width > 32:
                if used:
                    reg, used = reg + 4, 0
            for ci, (i, w) in enumerate(chunks):
                if used + w > 32:
                    reg, used = reg + 4, 0
                fname = src if ci == 0 else f"{src}_{ci}"
                last = ci == len(chunks) - 1
                part = Part(fname, src, bit0 + i, reg, used, w, signed and last)
                parts.append(part)
                per_reg.setdefault(reg, []).append(
                    Field(fname.upper(), used, w, field_desc.get(src, src.replace("_", " ")),
                          signed and last, tuple(field_codes.get(src, ()))))
                used += w
        regs = sorted(per_reg)
        sep = "_" if name[-1].isdigit() else ""
        for i, r in enumerate(regs):
            self.reg(f"{name}{sep}{i}" if len(regs) > 1 else name, r, access, f"{desc} (word {i})" if len(regs) > 1 else desc,
                     per_reg[r], window=name)
        self.windows.append(Window(name, kind, layout.size, tuple(parts), tuple(regs), bit))
        return regs[-1] + 4


def _common(b: _Builder, cfg: HwConfig, top: str) -> None:
    b.reg("ID", 0x00, "ro", "identifies a fluidnpu CSR slave: 'FNPU' in ASCII",
          [Field("ID", 0, 32, "0x464E5055")], reset=ID_VALUE)
    b.reg("VERSION", 0x04, "ro", "register map version and which top is wrapped",
          [Field("MAP", 0, 8, "register map version"), Field("TOP", 8, 8, "0: core, 1: npu with FBE")],
          reset=REGMAP_VERSION | TOPS[top] << 8)
    b.reg("HWCFG0", 0x08, "ro", "the generator's configuration (part 1)",
          [Field("TC", 0, 8, "PEs (T_C)"), Field("TP", 8, 8, "lanes per PE (T_P)"),
           Field("DATA_WIDTH", 16, 8, "operand bits"), Field("MEM_BYTES", 24, 8, "bytes per memory beat")],
          reset=cfg.tc | cfg.tp << 8 | cfg.data_width << 16 | cfg.mem_bytes << 24)
    b.reg("HWCFG1", 0x0C, "ro", "the generator's configuration (part 2)",
          [Field("TR", 0, 16, "rows per input tile (T_R)"), Field("ACC_WIDTH", 16, 8, "accumulator bits"),
           Field("ADDR_WIDTH", 24, 8, "byte address bits")],
          reset=cfg.tr | cfg.acc_width << 16 | cfg.addr_width << 24)
    b.reg("HWCFG2", 0x10, "ro", "the generator's configuration (part 3)",
          [Field("B_MAX", 0, 8, "batch slots"), Field("DIM_WIDTH", 8, 8, "bits of R, P, C"),
           Field("NET_ENTRIES", 16, 16, "FBE program entries")],
          reset=cfg.b_max | cfg.dim_width << 8 | cfg.net_entries << 16)
    b.reg("CYCLE", 0x14, "ro", "clock cycles since reset (wraps at 2**32)",
          [Field("CYCLE", 0, 32, "cycles")])
    b.reg("ERROR", 0x1C, "ro", "sticky error flags (cleared by writing 1s to ERROR_CLEAR)",
          [Field("BUS", 0, 1, "the memory bus answered a request with ERR"),
           Field("OVERRUN", 1, 1, "a PUSH bit was written while that stream's push was still pending"
                                  " (that PUSH bit was ignored)")])
    b.reg("ERROR_CLEAR", 0x20, "wo", "clear error flags",
          [Field("BUS", 0, 1, "clear ERROR.BUS"), Field("OVERRUN", 1, 1, "clear ERROR.OVERRUN")],
          effect="each 1 bit clears that ERROR flag")


def _core_map(cfg: HwConfig) -> RegMap:
    b = _Builder()
    _common(b, cfg, "core")
    b.reg("STATUS", 0x18, "ro", "state of the core and its command",
          [Field("BUSY", 0, 1, "the core runs a layer"),
           Field("CMD_PENDING", 1, 1, "a pushed command waits for the core to take it")])
    b.reg("PUSH", 0x24, "wo", "send a command",
          [Field("CMD", 0, 1, "send the DESC window as the core's next layer")],
          effect="CMD = 1: the DESC window becomes the pending command (STATUS.CMD_PENDING) until "
                 "the core takes it; ignored (ERROR.OVERRUN) while one is pending")
    b.reg("DONE_COUNT", 0x28, "ro", "layers completed since reset (busy fell)",
          [Field("COUNT", 0, 32, "layers")])
    b.reg("LAST_CYCLES", 0x2C, "ro", "cycles of the last completed layer: from the cycle the core "
          "took the command to the first cycle it was no longer busy",
          [Field("CYCLES", 0, 32, "cycles")])
    nxt = b.window("DESC", layer_desc_layout(cfg), 0x40, "push",
                   "the layer descriptor (docs/architecture.md); writes ignored while "
                   "STATUS.CMD_PENDING", bit=0)
    gstart = max(0x100, (nxt + 0x3F) & ~0x3F)
    from amaranth.lib.data import StructLayout
    from amaranth.hdl import unsigned
    glay = StructLayout({"addr": unsigned(cfg.addr_width)})
    off = gstart
    for i in range(cfg.b_max):
        off = b.window(f"GATHER{i}", glay, off, "push",
                       f"X row-gather table, entry {i}: the X address of sample {i} for "
                       f"descriptors with RS > 0 (read by the core while it runs)")
    return RegMap("core", cfg, tuple(sorted(b.regs, key=lambda r: r.offset)), tuple(b.windows))


STREAMS_IN = ("PROG", "TABLE", "ADMIT", "PREEMPT")


def _codes(names) -> tuple[tuple[str, int], ...]:
    """Named values ``0, 1, ...`` of an enumerated field, from :mod:`.fbe_layout`'s names."""
    return tuple((n.upper(), v) for v, n in enumerate(names))
STREAMS_OUT = ("RESULT", "EVENT")


def _npu_map(cfg: HwConfig) -> RegMap:
    from amaranth.hdl import unsigned
    from amaranth.lib.data import StructLayout
    b = _Builder()
    _common(b, cfg, "npu")
    b.reg("STATUS", 0x18, "ro", "stream state of the NPU with its FBE",
          [Field(f"{s}_PENDING", i, 1, f"a pushed {s} write waits to be taken")
           for i, s in enumerate(STREAMS_IN)] +
          [Field("RESULT_VALID", 8, 1, "the RESULT window holds a result (the oldest)"),
           Field("EVENT_VALID", 9, 1, "the EVENT window holds an event (the oldest)")])
    b.reg("PUSH", 0x24, "wo", "send the input windows to the FBE",
          [Field(s, i, 1, f"send the {s} window") for i, s in enumerate(STREAMS_IN)],
          effect="each 1 bit makes that window a pending write (STATUS.<name>_PENDING) until the FBE "
                 "takes it; ignored (ERROR.OVERRUN) for a stream already pending")
    b.reg("POP", 0x28, "wo", "remove the shown result / event",
          [Field("RESULT", 0, 1, "drop the shown result"), Field("EVENT", 1, 1, "drop the shown event")],
          effect="each 1 bit drops the head of that stream (nothing if its *_VALID is 0); "
                 "the window shows the next one from the following cycle")
    cl = StructLayout({"res_addr": unsigned(cfg.addr_width), "res_shift": unsigned(6),
                       "step": unsigned(1)})
    off = b.window("CTRL", cl, 0x30, "live",
                   "result areas and step mode (live: the FBE reads them all the time)")
    off = b.window("PREEMPT", StructLayout({"b_incr": unsigned((cfg.b_max).bit_length())}), off,
                   "push", "B_incr: samples to admit (0: continue, in step mode)", bit=3)
    off = b.window("TABLE", table_write_layout(cfg), off, "push",
                   "control table write: policy word for (batch size B, column LID)", bit=1)
    off = b.window("ADMIT", admit_layout(cfg), off, "push", "stage a sample: tag and input address", bit=2)
    off = b.window("FBE", status_layout(cfg), (off + 0xF) & ~0xF, "view",
                   "the FBE's registers (docs/fbe.md)", field_codes={"mode": _codes(MODE_NAMES)})
    off = b.window("RESULT", result_layout(cfg), (off + 0xF) & ~0xF, "pop",
                   "the oldest result (valid while STATUS.RESULT_VALID)", bit=0)
    off = b.window("EVENT", event_layout(cfg), (off + 0xF) & ~0xF, "pop",
                   "the oldest event (valid while STATUS.EVENT_VALID)", bit=1,
                   field_desc={"info": "exit id (EXIT), or refusal reason (REFUSE: "
                                       + ", ".join(f"{v} {n}" for v, n in sorted(REFUSE_NAMES.items()))
                                       + ")"},
                   field_codes={"kind": _codes(EVENT_NAMES)})
    b.window("PROG", prog_write_layout(cfg), max(0x100, (off + 0x3F) & ~0x3F), "push",
             "program entry write: entry IDX of the descriptor memory (docs/fbe.md)", bit=0)
    return RegMap("npu", cfg, tuple(sorted(b.regs, key=lambda r: r.offset)), tuple(b.windows))


def regmap(cfg: HwConfig, top: str) -> RegMap:
    """The register map of the wrapped ``top`` (``core`` or ``npu``) for ``cfg``."""
    if top not in TOPS:
        raise ValueError(f"top = {top!r}: must be one of {', '.join(TOPS)}")
    return _core_map(cfg) if top == "core" else _npu_map(cfg)
