"""A host driver for the NPU with its FBE behind its Wishbone CSR slave
(``fluidnpu_npu_wb``), written against the generated register module only (the
``<stem>_regs.py`` that ``fluidnpu generate --bus wishbone`` or ``fluidnpu regmap
--format py`` writes) and a :class:`~.transport.Transport`.

Protocol (docs/registers.md): a *push* window is written, then its ``PUSH`` bit; it is
pending (``STATUS.<NAME>_PENDING``) until the FBE takes it. An output window shows the
oldest entry while ``STATUS.<NAME>_VALID``; its ``POP`` bit drops it. Timeouts are
counted in the NPU's own cycles (the ``CYCLE`` register), so they mean the same in
simulation and on a board.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .transport import Transport

__all__ = ["DriverError", "NpuDriver", "load_regs", "regs_for"]

_NEEDED = ("TOP", "REGS", "RESET", "REGISTERS", "WINDOWS", "pack", "unpack")
_WRAP = 1 << 32


class DriverError(RuntimeError):
    """The NPU answered something the protocol does not allow (names register and value)."""


def _module(name: str, path: Path | None, text: str | None) -> ModuleType:
    if path is not None:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod          # dataclasses look their module up there
        spec.loader.exec_module(mod)
    else:
        mod = ModuleType(name)
        sys.modules[name] = mod
        exec(compile(text, f"<{name}>", "exec"), mod.__dict__)
    missing = [n for n in _NEEDED if not hasattr(mod, n)]
    if missing:
        raise DriverError(f"register module {path or name}: lacks {', '.join(missing)}; not a module "
                          f"written by 'fluidnpu regmap --format py'")
    return mod


def load_regs(path: str | Path) -> ModuleType:
    """Import a generated register module (``<stem>_regs.py``) from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DriverError(f"register module {path}: no such file (write it with 'fluidnpu regmap "
                          f"--format py --top npu --out {path}')")
    return _module(f"fluidnpu_regs_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}", path, None)


def regs_for(cfg, top: str = "npu") -> ModuleType:
    """The register module of ``top`` for the hardware configuration ``cfg``: the same text
    ``fluidnpu regmap --format py`` writes, imported from memory."""
    from fluidnpu.hw.regmap import regmap
    from fluidnpu.hw.regmap_render import to_python
    text = to_python(regmap(cfg, top))
    return _module(f"fluidnpu_regs_{top}_{hashlib.sha1(text.encode()).hexdigest()[:12]}", None, text)


class NpuDriver:
    """Register-level access to one ``fluidnpu_npu_wb`` through ``transport``.

    ``regs``: the generated register module of that NPU's configuration;
    ``timeout_cycles``: how many NPU cycles a blocking wait may take before it raises
    :class:`DriverError`.
    """

    def __init__(self, transport: Transport, regs: ModuleType, *, timeout_cycles: int = 200_000):
        if not isinstance(transport, Transport):
            raise TypeError(f"transport = {transport!r}: must implement read32, write32, write_mem, read_mem")
        missing = [n for n in _NEEDED if not hasattr(regs, n)]
        if missing:
            raise DriverError(f"regs: lacks {', '.join(missing)}; pass the module 'fluidnpu regmap --format py' "
                              f"writes")
        if regs.TOP != "npu":
            raise DriverError("regs: the register module is the core's; the driver needs the NPU's (--top npu)")
        if not isinstance(timeout_cycles, int) or timeout_cycles < 1:
            raise ValueError(f"timeout_cycles = {timeout_cycles!r}: must be an integer >= 1")
        self.t, self.regs, self.timeout_cycles = transport, regs, timeout_cycles
        self.fields = {r.name: {f.name: f for f in r.fields} for r in regs.REGISTERS}
        self.accesses = 0
        parts = regs.WINDOWS["PROG"]["parts"]
        idx = next(p for p in parts if p[1] == "idx")
        self._entry_shift = idx[2] + idx[5]        # PROG = {idx, entry}: the entry follows idx

    # -- registers -------------------------------------------------------------------------
    def read(self, name: str) -> int:
        self.accesses += 1
        return self.t.read32(self.regs.REGS[name]) & 0xFFFFFFFF

    def write(self, name: str, value: int) -> None:
        self.accesses += 1
        self.t.write32(self.regs.REGS[name], value & 0xFFFFFFFF)

    def field(self, reg: str, fname: str, value: int) -> int:
        f = self.fields[reg][fname]
        return (value >> f.lsb) & ((1 << f.width) - 1)

    def bit(self, reg: str, fname: str) -> int:
        f = self.fields[reg][fname]
        return ((1 << f.width) - 1) << f.lsb

    def decode(self, reg: str, value: int) -> dict:
        """A register's value as ``{field: value}`` (field names as in the map)."""
        return {n: self.field(reg, n, value) for n in self.fields[reg]}

    def _write_struct(self, window: str, value: int) -> None:
        """Write a window's registers from the packed structure ``value`` (all its bits)."""
        words = {reg: 0 for reg in self.regs.WINDOWS[window]["regs"]}
        for _, _, bit, reg, lsb, width, _ in self.regs.WINDOWS[window]["parts"]:
            words[reg] |= ((value >> bit) & ((1 << width) - 1)) << lsb
        for reg, w in words.items():
            self.accesses += 1
            self.t.write32(reg, w)

    def _read_window(self, window: str) -> dict:
        words = {}
        for reg in self.regs.WINDOWS[window]["regs"]:
            self.accesses += 1
            words[reg] = self.t.read32(reg) & 0xFFFFFFFF
        return self.regs.unpack(window, words)

    # -- identity and state ----------------------------------------------------------------
    def probe(self) -> dict:
        """Check that the slave is the NPU this register module describes; returns the
        decoded ``HWCFG*`` fields."""
        got = self.read("ID")
        if got != self.regs.RESET["ID"]:
            raise DriverError(f"ID = {got:#010x}: not a fluidnpu CSR slave (expected {self.regs.RESET['ID']:#010x}); "
                              f"check the transport's base address")
        out = {}
        for name in ("VERSION", "HWCFG0", "HWCFG1", "HWCFG2"):
            got = self.read(name)
            if got != self.regs.RESET[name]:
                raise DriverError(f"{name} = {got:#010x}, the register module says {self.regs.RESET[name]:#010x} "
                                  f"({self.decode(name, got)} against {self.decode(name, self.regs.RESET[name])}): "
                                  f"the NPU was generated with another configuration or top")
            out.update(self.decode(name, got))
        return out

    def cycle(self) -> int:
        return self.read("CYCLE")

    def status(self) -> int:
        return self.read("STATUS")

    def fbe(self) -> dict:
        """The FBE's registers (mode, layer, b_act, b_old, l_old, free, staged, hold, decide)."""
        return self._read_window("FBE")

    def check_errors(self) -> None:
        """Raise if a sticky ERROR flag is set (then clear it, so the next check is fresh)."""
        err = self.read("ERROR")
        if err:
            flags = [n for n, v in self.decode("ERROR", err).items() if v]
            self.write("ERROR_CLEAR", err)
            raise DriverError(f"ERROR = {err:#x} ({', '.join(flags)}): " +
                              ("the memory bus answered with ERR; " if "BUS" in flags else "") +
                              ("a PUSH bit was written while its window was pending" if "OVERRUN" in flags else ""))

    def _wait_status(self, what: str, done) -> int:
        """Poll STATUS until ``done(status)``; raise after ``timeout_cycles`` NPU cycles."""
        start, n = None, 0
        while True:
            st = self.status()
            if done(st):
                return st
            n += 1
            if n == 1:
                start = self.cycle()
            elif n % 8 == 0:
                waited = (self.cycle() - start) % _WRAP
                if waited > self.timeout_cycles:
                    raise DriverError(f"STATUS = {st:#010x} ({self.decode('STATUS', st)}): {what} not seen "
                                      f"{waited} cycles after the wait began (timeout_cycles = "
                                      f"{self.timeout_cycles}); FBE = {self.fbe()}")

    # -- input streams ---------------------------------------------------------------------
    def pending(self, name: str, status: int | None = None) -> bool:
        st = self.status() if status is None else status
        return bool(st & self.bit("STATUS", f"{name}_PENDING"))

    def push(self, name: str, value: int, *, wait: bool = True, status: int | None = None) -> None:
        """Write the packed structure ``value`` into window ``name`` and push it; with
        ``wait``, return once the FBE has taken it. A window still pending is an error
        (the write would be ignored). ``status``: a STATUS value read since the last push
        of ``name`` (a pending bit only clears by itself), to save a read."""
        size = self.regs.WINDOWS[name]["size"]
        if not 0 <= int(value) < 1 << size:
            raise DriverError(f"{name} = {value:#x}: does not fit the window's {size} bits")
        if self.pending(name, status):
            raise DriverError(f"STATUS.{name}_PENDING = 1: the previous {name} write is not taken yet")
        self._write_struct(name, value)
        self.write("PUSH", 1 << self.regs.WINDOWS[name]["bit"])
        if wait:
            mask = self.bit("STATUS", f"{name}_PENDING")
            self._wait_status(f"STATUS.{name}_PENDING = 0 (the FBE taking the {name} write)",
                              lambda st: not st & mask)

    def load_program(self, entries) -> None:
        """Write the network program (packed entries, docs/fbe.md), entry ``i`` at index ``i``."""
        n = self.field("HWCFG2", "NET_ENTRIES", self.regs.RESET["HWCFG2"])
        if len(entries) > n:
            raise DriverError(f"program of {len(entries)} entries: the NPU holds {n} (HWCFG2.NET_ENTRIES)")
        for i, e in enumerate(entries):
            self.push("PROG", i | (int(e) << self._entry_shift))

    def load_table(self, rows) -> None:
        """Write the control table: ``(b, lid, word)`` rows."""
        for b, lid, word in rows:
            self.push("TABLE", self._struct_of("TABLE", self.regs.pack("TABLE", {"b": b, "lid": lid, "word": word})))

    def set_control(self, res_addr: int, res_shift: int, step: bool = False) -> None:
        """The result area (results of tag ``t`` at ``res_addr + (t << res_shift)``) and step mode."""
        for reg, w in self.regs.pack("CTRL", {"res_addr": res_addr, "res_shift": res_shift,
                                              "step": int(step)}).items():
            self.accesses += 1
            self.t.write32(reg, w)

    def admit(self, tag: int, x_addr: int, *, wait: bool = False, status: int | None = None) -> None:
        """Stage sample ``tag`` whose input is at ``x_addr``."""
        for what, v, f in (("tag", tag, "TAG"), ("x_addr", x_addr, "X_ADDR")):
            width = self.fields["ADMIT0" if f == "TAG" else "ADMIT1"][f].width
            if not 0 <= int(v) < 1 << width:
                raise DriverError(f"ADMIT {what} = {v}: must be from 0 to {(1 << width) - 1}")
        self.push("ADMIT", self._struct_of("ADMIT", self.regs.pack("ADMIT", {"tag": tag, "x_addr": x_addr})),
                  wait=wait, status=status)

    def preempt(self, b_incr: int, *, wait: bool = False, status: int | None = None) -> None:
        """Ask the FBE to admit ``b_incr`` staged samples (0: continue, in step mode)."""
        self.push("PREEMPT", b_incr, wait=wait, status=status)

    def _struct_of(self, window: str, words: dict) -> int:
        v = 0
        for _, _, bit, reg, lsb, width, _ in self.regs.WINDOWS[window]["parts"]:
            v |= ((words[reg] >> lsb) & ((1 << width) - 1)) << bit
        return v

    # -- output streams --------------------------------------------------------------------
    def pop(self, name: str, status: int | None = None) -> dict | None:
        """The oldest ``RESULT`` / ``EVENT`` (dropped from the NPU), or None if there is none."""
        st = self.status() if status is None else status
        if not st & self.bit("STATUS", f"{name}_VALID"):
            return None
        out = self._read_window(name)
        self.write("POP", 1 << self.regs.WINDOWS[name]["bit"])
        return out

    def poll(self) -> tuple[int, list[dict], list[dict]]:
        """One STATUS read, then the shown result and event popped: ``(status, results, events)``."""
        st = self.status()
        r = self.pop("RESULT", st)
        e = self.pop("EVENT", st)
        return st, [r] if r else [], [e] if e else []

    # -- memory ----------------------------------------------------------------------------
    def write_mem(self, addr: int, data) -> None:
        self.t.write_mem(int(addr), bytes(data))

    def read_mem(self, addr: int, n: int) -> bytes:
        return self.t.read_mem(int(addr), int(n))
