"""Verilator -Wall lint of the generated NPU: no errors, only the explained warning categories."""
import pytest
from amaranth.back import verilog

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.core import NPUCore
from fluidnpu.hw.lint import EXPLAINED, lint_verilog, parse_lint


@pytest.mark.rtl
@pytest.mark.parametrize("cfg", [HwConfig(), HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024,
                                                        w_buf_elems=512, mem_bytes=4)],
                         ids=["default", "small"])
def test_generated_verilog_lints_clean(cfg, tmp_path):
    v = tmp_path / "npu.v"
    v.write_text(verilog.convert(NPUCore(cfg), name="fluidnpu_core"))
    rep = lint_verilog(v)
    assert rep.errors == [], rep.format()
    assert rep.unexplained == {}, rep.format()
    assert sum(rep.warnings.values()) > 0      # the lint really ran with -Wall


@pytest.mark.rtl
def test_npu_with_fbe_lints_clean(tmp_path):
    """The whole NPU (core, FBE, exit unit) adds no error and no new warning category."""
    from click.testing import CliRunner
    from fluidnpu.cli import main
    r = CliRunner().invoke(main, ["lint", "--top", "npu", "--set", "tc=4", "--set", "tp=4", "--set", "tr=8",
                                  "--set", "x_buf_elems=1024", "--set", "w_buf_elems=512", "--set", "mem_bytes=4",
                                  "--set", "b_max=4", "--set", "net_entries=8", "--set", "max_classes=8"])
    assert r.exit_code == 0, r.output
    assert "explained in docs/lint.md" in r.output and "UNUSEDSIGNAL" in r.output


def test_parser_flags_errors_and_unexplained_categories():
    text = ("%Warning-WIDTHEXPAND: a.v:1:1: x\n%Warning-LATCH: a.v:2:2: latch inferred\n"
            "%Error: a.v:3:3: syntax error\n%Error: Exiting due to 1 error(s)\n")
    rep = parse_lint(text)
    assert rep.errors == ["%Error: a.v:3:3: syntax error"]
    assert set(rep.unexplained) == {"LATCH"}
    assert not rep.ok
    assert "LATCH" not in EXPLAINED
