"""The model zoo: early-exit networks shipped as model TOML + topology CSV files.

``names()`` lists them, ``load(name)`` returns an EEModel, ``resolve_model(x)``
accepts a zoo name or a path to a model TOML. The table of models, their exits and
where their exit rates come from is in docs/models.md.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import WorkloadError
from ..loader import load_model
from ..model import EEModel

__all__ = ["ZOO_DIR", "names", "path", "load", "resolve_model"]

ZOO_DIR = Path(__file__).parent


def names() -> list[str]:
    """Names of the zoo models, sorted."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.toml"))


def path(name: str) -> Path:
    """The model TOML file of zoo model ``name``."""
    if name not in names():
        raise WorkloadError.at("model zoo", "name", name, f"not a zoo model; valid names: {', '.join(names())}")
    return ZOO_DIR / f"{name}.toml"


def load(name: str) -> EEModel:
    """Load zoo model ``name``."""
    return load_model(path(name))


def resolve_model(name_or_path) -> EEModel:
    """An EEModel from a zoo name, a path to a model TOML file, or an EEModel (returned as is)."""
    if isinstance(name_or_path, EEModel):
        return name_or_path
    s = str(name_or_path)
    if s in names() and not Path(s).suffix:
        return load(s)
    p = Path(s)
    if p.is_file():
        return load_model(p)
    if p.suffix.lower() == ".toml":
        raise WorkloadError.at("model", "path", s, "no such model file")
    raise WorkloadError.at("model", "name", s, f"neither a zoo model nor a model file; "
                           f"zoo models: {', '.join(names())}")
