"""The simulated board serving a co-simulation setup: :func:`run_board_sim` runs
:func:`fluidnpu.board.serve.run_on_transport` against the bus-wrapped NPU under cocotb
(bench :mod:`.board_tb`), the code ``fluidnpu board run`` runs against a ULX3S over
UARTBone (docs/board.md)."""
from __future__ import annotations

import pickle
import shutil

from fluidnpu.hw.runner import MemTiming, SimError

from .run import CosimSetup, RunRecord

__all__ = ["run_board_sim", "serve_in_cocotb"]


def run_board_sim(s: CosimSetup, sim: str = "icarus", *, mem: MemTiming = MemTiming(latency=5),
                  max_cycles: int | None = None, run_dir=None) -> RunRecord:
    """Serve ``s``'s trace on the simulated ``fluidnpu_npu_wb`` through the host driver;
    the record's engine is ``board-sim:<sim>``. Raises :class:`SimError` when the bench fails."""
    from fluidnpu.hw.bus_runner import TOP_NPU_WB, build_wishbone_npu
    bdir = build_wishbone_npu(s.cfg, sim)
    return serve_in_cocotb(sim, bdir, TOP_NPU_WB, "fluidnpu.sim.cosim.board_tb", s, run_dir,
                           prefix="fluidnpu-boardsim-", what="the simulated board",
                           payload={"timing": mem, "engine": f"board-sim:{sim}",
                                    "max_cycles": max_cycles})


def serve_in_cocotb(sim: str, bdir, top: str, bench: str, s: CosimSetup, run_dir, *, prefix: str,
                    what: str, payload: dict) -> RunRecord:
    """Run the cocotb ``bench`` (test ``serve``) on the built model ``bdir`` with ``s`` and
    ``payload`` in its run folder, and return the record it leaves (``result.pickle``).
    The run folder is a temporary one unless ``run_dir`` is given; it is kept on failure
    and named in the :class:`SimError`."""
    from fluidnpu.hw.regmap import regmap
    from fluidnpu.hw.regmap_render import to_python
    from fluidnpu.hw.runner import run_cocotb, run_folder
    with run_folder(run_dir, prefix) as (rdir, tmp):
        (rdir / "regs.py").write_text(to_python(regmap(s.cfg, "npu")))
        (rdir / "setup.pickle").write_bytes(pickle.dumps({"setup": s, **payload}))
        res = run_cocotb(sim, bdir, top, bench, rdir, extra_env={"FLUIDNPU_RUN_DIR": str(rdir)})
        out = rdir / "result.pickle"
        err = res.get("serve", "cocotb test 'serve' did not run")
        if err is not None or not out.exists():
            raise SimError(f"{sim}: {what} failed (run dir {rdir}): {err}\n"
                           f"(simulator log: {rdir / 'sim.log'})")
        rec = pickle.loads(out.read_bytes())
        if tmp:
            shutil.rmtree(rdir, ignore_errors=True)
    return rec
