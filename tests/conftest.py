"""Shared pytest fixtures."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top directory (holds pyproject.toml, examples/, docs/)."""
    return Path(__file__).resolve().parents[1]
