"""The one error type of workload files (topology CSVs, model TOMLs, exit counts)."""
from __future__ import annotations

__all__ = ["WorkloadError"]


class WorkloadError(ValueError):
    """A workload file or value breaks a rule.

    The message names the file, the line (when known), the field or key, the bad
    value and what is allowed; the same facts are kept as attributes.
    """

    def __init__(self, message: str, *, file=None, line: int | None = None,
                 field: str | None = None, value=None):
        super().__init__(message)
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.value = value

    @classmethod
    def at(cls, file, field: str, value, problem: str, *, line: int | None = None) -> "WorkloadError":
        """Build the standard message ``file:line: field = value: problem``."""
        where = str(file) + (f":{line}" if line is not None else "")
        return cls(f"{where}: {field} = {value!r}: {problem}", file=file, line=line, field=field, value=value)
