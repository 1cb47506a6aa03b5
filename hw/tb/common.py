"""What the cocotb benches share: the run directory and its parameters."""
from __future__ import annotations

import json
import os
from pathlib import Path


def load_params() -> tuple[Path | None, dict | None]:
    """``(run dir, params.json)`` from env ``FLUIDNPU_RUN_DIR``; ``(None, None)`` outside a run."""
    d = os.environ.get("FLUIDNPU_RUN_DIR")
    if not d:
        return None, None
    run_dir = Path(d)
    return run_dir, json.loads((run_dir / "params.json").read_text())
