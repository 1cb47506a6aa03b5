"""yosys' simulation models of ECP5 cells (``share/yosys/ecp5/cells_sim.v``) for checking
netlists that instantiate cells themselves (hw/gated_add.py, hw/widemux.py) under Icarus
Verilog: the models, a skip marker where they or Icarus are missing, and a runner that
prints one integer per test vector."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest


def cells_sim() -> Path | None:
    yosys = shutil.which("yosys")
    if yosys is None:
        return None
    p = Path(yosys).resolve().parent.parent / "share" / "yosys" / "ecp5" / "cells_sim.v"
    return p if p.exists() else None


needs_cells = pytest.mark.skipif(cells_sim() is None or shutil.which("iverilog") is None,
                                 reason="needs yosys' ECP5 cell models and Icarus Verilog")


def cell_models(names) -> str:
    """The models of ``names`` (the file's other cells need includes of their own)."""
    path = cells_sim()
    text = path.read_text()
    out = []
    for name in names:
        m = re.search(rf"^module {name}\b.*?^endmodule", text, flags=re.S | re.M)
        assert m, f"{name} not in {path}"
        out.append(m.group(0))
    return "\n".join(out)


def run_vectors(tmp_path: Path, dut_verilog: str, cells, ports: list[tuple[str, int]],
                out: tuple[str, int], vectors: list[int]) -> list[int]:
    """Simulate module ``dut`` (``dut_verilog``) on ``vectors``, each the concatenation of
    ``ports`` (name, width; first port in the high bits); the output's value per vector."""
    total = sum(w for _, w in ports)
    (tmp_path / "dut.v").write_text(dut_verilog)
    (tmp_path / "cells.v").write_text(cell_models(cells))
    (tmp_path / "vec.hex").write_text("".join(f"{v:x}\n" for v in vectors))
    decl = "\n".join(f"  reg [{w - 1}:0] {n};" for n, w in ports)
    conn = ", ".join(f".{n}({n})" for n, _ in ports + [out])
    (tmp_path / "tb.v").write_text(f"""`timescale 1ns/1ps
module tb;
  reg [{total - 1}:0] vec [0:{len(vectors) - 1}];
{decl}
  wire [{out[1] - 1}:0] {out[0]};
  dut u({conn});
  integer vi_;
  initial begin
    $readmemh("vec.hex", vec);
    for (vi_ = 0; vi_ < {len(vectors)}; vi_ = vi_ + 1) begin
      {{{", ".join(n for n, _ in ports)}}} = vec[vi_];
      #1 $display("%0d", {out[0]});
    end
    $finish;
  end
endmodule
""")
    subprocess.run(["iverilog", "-g2005", "-o", "sim", "tb.v", "dut.v", "cells.v"],
                   cwd=tmp_path, check=True, capture_output=True, text=True)
    res = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True,
                         text=True)
    got = [int(v) for v in res.stdout.split()]
    assert len(got) == len(vectors)
    return got
