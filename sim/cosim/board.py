"""The simulated board serving a co-simulation setup: :func:`run_board_sim` runs
:func:`fluidnpu.board.serve.run_on_transport` against the bus-wrapped NPU under cocotb
(bench :mod:`.board_tb`), the code ``fluidnpu board run`` runs against a ULX3S over
UARTBone (docs/board.md)."""
from __future__ import annotations

import pickle
import shutil

from fluidnpu.hw.runner import MemTiming, SimError

from .run import CosimSetup, RunRecord

__all__ = ["run_board_sim"]


def run_board_sim(s: CosimSetup, sim: str = "icarus", *, mem: MemTiming = MemTiming(latency=5),
                  max_cycles: int | None = None, run_dir=None) -> RunRecord:
    """Serve ``s``'s trace on the simulated ``fluidnpu_npu_wb`` through the host driver;
    the record's engine is ``board-sim:<sim>``. Raises :class:`SimError` when the bench fails."""
    from fluidnpu.hw.bus_runner import TOP_NPU_WB, build_wishbone_npu
    from fluidnpu.hw.regmap import regmap
    from fluidnpu.hw.regmap_render import to_python
    from fluidnpu.hw.runner import run_cocotb, run_folder
    bdir = build_wishbone_npu(s.cfg, sim)
    with run_folder(run_dir, "fluidnpu-boardsim-") as (rdir, tmp):
        (rdir / "regs.py").write_text(to_python(regmap(s.cfg, "npu")))
        (rdir / "setup.pickle").write_bytes(pickle.dumps({"setup": s, "timing": mem, "engine": f"board-sim:{sim}",
                                                          "max_cycles": max_cycles}))
        res = run_cocotb(sim, bdir, TOP_NPU_WB, "fluidnpu.sim.cosim.board_tb", rdir,
                         extra_env={"FLUIDNPU_RUN_DIR": str(rdir)})
        out = rdir / "result.pickle"
        err = res.get("serve", "cocotb test 'serve' did not run")
        if err is not None or not out.exists():
            raise SimError(f"{sim}: the simulated board failed (run dir {rdir}): {err}\n"
                           f"(simulator log: {rdir / 'sim.log'})")
        rec = pickle.loads(out.read_bytes())
        if tmp:
            shutil.rmtree(rdir, ignore_errors=True)
    return rec
