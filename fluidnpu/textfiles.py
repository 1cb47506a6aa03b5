"""Reading the text files users write (TOML, CSV): UTF-8 only, with a clear error otherwise."""
from __future__ import annotations

import codecs
from pathlib import Path

__all__ = ["TextFileError", "read_text"]


class TextFileError(ValueError):
    """A file is not plain UTF-8 text; the message names the file and the place."""


def read_text(path: str | Path) -> str:
    """The text of ``path``, which must be UTF-8 without a byte-order mark.

    TOML requires UTF-8, and Python's TOML reader rejects a byte-order mark with only
    "Invalid statement (at line 1, column 1)"; both are named here instead. OSError
    (missing file, permissions) propagates.
    """
    p = Path(path)
    data = p.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        raise TextFileError(f"{p}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without a BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise TextFileError(f"{p}: not UTF-8 text: byte 0x{data[e.start]:02x} at line {line}, column {col} "
                            f"(byte offset {e.start}); save the file as UTF-8") from None
