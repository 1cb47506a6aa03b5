"""The register map: its C header, Python module and Markdown agree with the description
(and with each other); windows hold exactly the port structures; the CLI around it."""
from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.fbe_layout import pack
from fluidnpu.hw.regmap import ID_VALUE, RegMap, regmap
from fluidnpu.hw.regmap_render import REGISTERS_INTRO, to_c, to_markdown, to_python

CFGS = {"default": HwConfig(),
        # 40-bit addresses split fields across registers; a tiny FBE
        "wide": HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, addr_width=40, mem_bytes=4,
                         b_max=3, net_entries=4, dim_width=20)}


def _load_py(text: str, tmp_path, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[name]
    return mod


def _parse_c(text: str) -> dict[str, int]:
    defs = dict(re.findall(r"^#define (\w+) (0x[0-9a-f]+|\d+)u$", text, re.M))
    assert len(defs) == len(re.findall(r"^#define \w+ \S+u$", text, re.M))
    return {k: int(v, 0) for k, v in defs.items()}


def _parse_md(text: str, top: str) -> tuple[dict, dict]:
    """``{name: (offset, access, reset)}`` and ``{(reg, field): bits}`` of one top's section."""
    sec = text.split(f"## {'core' if top == 'core' else 'NPU'}")[1].split("\n## ")[0]
    regs, fields = {}, {}
    for off, name, acc, reset in re.findall(r"^\| `0x([0-9a-f]+)` \| `(\w+)` \| (\w+) \| `0x([0-9a-f]+)` \|",
                                            sec, re.M):
        regs[name] = (int(off, 16), acc, int(reset, 16))
    for reg, f, bits in re.findall(r"^\| `(\w+)` \| `(\w+)` \| ([\d:]+) \|", sec, re.M):
        fields[(reg, f)] = bits
    return regs, fields


@pytest.mark.parametrize("top", ["core", "npu"])
@pytest.mark.parametrize("cfg_name", sorted(CFGS))
def test_c_header_python_module_and_markdown_agree(top, cfg_name, tmp_path):
    rm: RegMap = regmap(CFGS[cfg_name], top)
    c = _parse_c(to_c(rm))
    py = _load_py(to_python(rm), tmp_path, f"regs_{top}_{cfg_name}")
    md_regs, md_fields = _parse_md(to_markdown([rm]), top)
    P = f"FNPU_{top.upper()}"
    assert c[f"{P}_REGION_BYTES"] == py.REGION_BYTES == 4096
    assert [r.name for r in py.REGISTERS] == [r.name for r in rm.registers] == list(md_regs)
    n_fields = 0
    for r, pr in zip(rm.registers, py.REGISTERS):
        assert c[f"{P}_{r.name}"] == py.REGS[r.name] == getattr(py, r.name) == md_regs[r.name][0] == r.offset
        assert c[f"{P}_{r.name}_RESET"] == py.RESET[r.name] == md_regs[r.name][2] == r.reset
        assert pr.access == md_regs[r.name][1] == r.access
        assert len(pr.fields) == len(r.fields)
        for f, pf in zip(r.fields, pr.fields):
            n = f"{P}_{r.name}_{f.name}"
            assert (c[f"{n}_SHIFT"], c[f"{n}_WIDTH"], c[f"{n}_MASK"]) == (f.lsb, f.width, f.mask)
            assert (pf.name, pf.lsb, pf.width, pf.mask, pf.signed) == (f.name, f.lsb, f.width, f.mask, f.signed)
            hi = f.lsb + f.width - 1
            assert md_fields[(r.name, f.name)] == (f"{hi}:{f.lsb}" if f.width > 1 else str(f.lsb))
            n_fields += 1
    assert n_fields == sum(len(r.fields) for r in rm.registers) > 10
    assert py.RESET["ID"] == ID_VALUE


def test_event_kinds_and_fbe_modes_are_named_in_all_three(tmp_path):
    """A host needs the event kinds to read EVENT windows: the C header, the Python module
    and the page name them with the values the FBE's RTL emits (fbe_layout)."""
    from fluidnpu.hw import fbe_layout as fl
    rm = regmap(HwConfig(), "npu")
    c = _parse_c(to_c(rm))
    py = _load_py(to_python(rm), tmp_path, "regs_codes")
    md = to_markdown([rm])
    kinds = {"layer_start": fl.EV_LAYER_START, "layer_done": fl.EV_LAYER_DONE, "exit": fl.EV_EXIT,
             "accept": fl.EV_ACCEPT, "refuse": fl.EV_REFUSE, "merge": fl.EV_MERGE,
             "resume": fl.EV_RESUME, "idle": fl.EV_IDLE}
    assert py.CODES["EVENT"]["kind"] == kinds
    assert py.CODES["FBE"]["mode"] == {n: i for i, n in enumerate(fl.MODE_NAMES)}
    assert set(py.CODES) == {"EVENT", "FBE"}
    reg = rm.at(rm.window("EVENT").parts[0].reg).name        # the register holding KIND
    for name, v in kinds.items():
        assert c[f"FNPU_NPU_{reg}_KIND_{name.upper()}"] == v
        assert f"{v} `{name.upper()}`" in md
    got = py.unpack("EVENT", py.pack("EVENT", {"kind": fl.EV_EXIT, "count": 3, "cycle": 77}))
    assert got["kind"] == py.CODES["EVENT"]["kind"]["exit"] and got["cycle"] == 77
    with pytest.raises(ValueError, match="code BIG = 8 does not fit its 3 bits"):
        from fluidnpu.hw.regmap import Field, Register
        Register("X", 0, "ro", "x", (Field("K", 0, 3, codes=(("BIG", 8),)),))


@pytest.mark.parametrize("cfg_name", sorted(CFGS))
def test_windows_hold_the_port_structures_bit_for_bit(cfg_name, tmp_path):
    """Every bit of each structure is in exactly one register field, and the generated
    ``pack``/``unpack`` map random field values to the words the RTL packs back into the
    structure the hardware sees (the RTL's rule: concatenate the parts in bit order)."""
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng(7)
    from fluidnpu.hw.interface import layer_desc_layout
    from fluidnpu.hw.fbe_layout import admit_layout, event_layout, result_layout, table_write_layout
    layouts = {("core", "DESC"): layer_desc_layout(cfg), ("npu", "TABLE"): table_write_layout(cfg),
               ("npu", "ADMIT"): admit_layout(cfg), ("npu", "RESULT"): result_layout(cfg),
               ("npu", "EVENT"): event_layout(cfg)}
    for (top, wname), layout in layouts.items():
        rm = regmap(cfg, top)
        py = _load_py(to_python(rm), tmp_path, f"regs_w_{top}_{cfg_name}")
        win = rm.window(wname)
        bits = sorted((p.bit, p.width) for p in win.parts)
        at = 0
        for b, w in bits:
            assert b == at, f"{wname}: gap or overlap at bit {at}"
            at += w
        assert at == layout.size == win.size
        for _ in range(5):
            vals = {}
            for name, f in layout:
                w = f.width
                lo, hi = (-(1 << (w - 1)), 1 << (w - 1)) if f.shape.signed else (0, 1 << w)
                vals[name] = int(rng.integers(lo, hi)) if w < 63 else int(rng.integers(0, 1 << 62))
            words = py.pack(wname, vals)
            assert set(words) == set(win.regs)
            assert all(0 <= v < 1 << 32 for v in words.values())
            packed = 0
            for p in sorted(win.parts, key=lambda p: p.bit):
                packed |= ((words[p.reg] >> p.lsb) & ((1 << p.width) - 1)) << p.bit
            assert packed == pack(layout, vals)
            assert py.unpack(wname, words) == vals


def test_split_fields_are_named_and_signed_on_the_top_part():
    rm = regmap(CFGS["wide"], "core")
    names = [f.name for r in rm.registers if r.window == "DESC" for f in r.fields]
    assert "X_ADDR" in names and "X_ADDR_1" in names
    assert {f.name: f.width for r in rm.registers for f in r.fields if r.window == "DESC"}["X_ADDR_1"] == 8


def test_pack_names_unknown_fields(tmp_path):
    py = _load_py(to_python(regmap(HwConfig(), "core")), tmp_path, "regs_bad")
    with pytest.raises(KeyError, match="unknown field.*bogus"):
        py.pack("DESC", {"r": 1, "bogus": 2})


def test_docs_registers_md_is_the_generated_map(repo_root):
    text = to_markdown([regmap(HwConfig(), "core"), regmap(HwConfig(), "npu")],
                       title="Registers of the bus-wrapped NPU", intro=REGISTERS_INTRO)
    assert (repo_root / "docs" / "registers.md").read_text() == text, \
        "docs/registers.md is stale: fluidnpu regmap --format md --top all --out docs/registers.md"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_regmap_cli_formats_and_errors(tmp_path):
    r = run("regmap", "--format", "c", "--top", "npu", "--set", "b_max=4")
    assert r.exit_code == 0 and "#define FNPU_NPU_HWCFG2_RESET 0x00201004u" in r.output
    out = tmp_path / "regs.py"
    r = run("regmap", "--format", "py", "--out", out)
    assert r.exit_code == 0 and "REGISTERS = (" in out.read_text()
    r = run("regmap", "--format", "c", "--top", "all")
    assert r.exit_code == 2 and "--top all needs --format md" in r.output
    r = run("regmap", "--format", "vhdl")
    assert r.exit_code == 2 and "'md', 'c', 'py'" in r.output


def test_generate_bus_wishbone_writes_the_top_and_its_map(tmp_path):
    out = tmp_path / "soc" / "npu_wb.v"
    r = run("generate", "--bus", "wishbone", "--set", "tc=4", "--set", "tp=4", "--set", "tr=8",
            "--set", "x_buf_elems=1024", "--set", "w_buf_elems=512", "-o", out)
    assert r.exit_code == 0, r.output
    v = out.read_text()
    assert "module fluidnpu_core_wb(" in v
    for port in ("bus__stb", "bus__stall", "bus__sel", "csr__adr", "csr__ack"):
        assert re.search(rf"(input|output) (\[\d+:0\] )?{port};", v), port
    assert sorted(p.name for p in out.parent.iterdir()) == ["npu_wb.v", "npu_wb_regs.h", "npu_wb_regs.md",
                                                            "npu_wb_regs.py"]
    assert "#define FNPU_CORE_PUSH 0x024u" in (out.parent / "npu_wb_regs.h").read_text()


def test_generate_bus_rejects_unknown_bus_before_writing(tmp_path):
    out = tmp_path / "x.v"
    r = run("generate", "--bus", "axi", "-o", out)
    assert r.exit_code == 2 and "'none', 'wishbone'" in r.output
    assert not out.exists()


def test_generate_bus_publishes_the_top_and_its_map_together(tmp_path, monkeypatch):
    """A failure while the four files are moved in (here: the disk fills at the second)
    leaves the previous top and register files as they were, none of the new ones."""
    import os

    import fluidnpu.cli as cli
    import fluidnpu.outputs as outputs
    # the Verilog itself is not what is tested: a stand-in saves two elaborations
    monkeypatch.setattr(cli, "_hdl_text", lambda cfg, rtlil, top, bus="none":
                        ("fluidnpu_core_wb", f"// b_max {cfg.b_max}\n"))
    out = tmp_path / "npu_wb.v"
    small = ["--set", "tc=4", "--set", "tp=4", "--set", "tr=8", "--set", "x_buf_elems=1024",
             "--set", "w_buf_elems=512"]
    assert run("generate", "--bus", "wishbone", *small, "-o", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before) == 4
    real, moved = os.replace, []

    def failing(src, dst):
        if os.path.dirname(os.path.abspath(dst)) == str(tmp_path):     # publication, not staging
            moved.append(dst)
            if len(moved) == 2:
                raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(outputs.os, "replace", failing)
    r = run("generate", "--bus", "wishbone", *small, "--set", "b_max=4", "-o", out)
    assert r.exit_code != 0 and len(moved) >= 2          # the second failed; then the rollback
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
