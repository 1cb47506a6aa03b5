"""The host driver's checks without a simulator: a register file in Python stands in for
the NPU (it never takes a push, so waits time out), and every error names the register
and its value."""
from __future__ import annotations

import pytest

from fluidnpu.board import DriverError, NpuDriver, load_regs, regs_for
from fluidnpu.hw.config import HwConfig

CFG = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, b_max=4,
               net_entries=16, max_classes=8)


class StuckNpu:
    """Registers at their reset values, CYCLE advancing 3 per access (a classic bus
    cycle), writes stored, nothing ever taken."""

    def __init__(self, regs):
        self.regs = regs
        self.r = {off: regs.RESET[name] for name, off in regs.REGS.items()}
        self.cycle = 0
        self.mem = bytearray(64)

    def read32(self, addr):
        self.cycle += 3
        if addr == self.regs.CYCLE:
            return self.cycle
        return self.r.get(addr, 0)

    def write32(self, addr, value):
        self.cycle += 3
        self.r[addr] = value
        if addr == self.regs.PUSH:                  # a push makes its window pending, forever
            for name, w in self.regs.WINDOWS.items():
                if w["kind"] == "push" and value >> w["bit"] & 1:
                    self.r[self.regs.STATUS] |= 1 << w["bit"]

    def write_mem(self, addr, data):
        self.mem[addr:addr + len(data)] = data

    def read_mem(self, addr, n):
        return bytes(self.mem[addr:addr + n])


@pytest.fixture
def regs():
    return regs_for(CFG)


def test_probe_accepts_the_matching_npu_and_names_a_mismatch(regs):
    t = StuckNpu(regs)
    assert NpuDriver(t, regs).probe()["B_MAX"] == 4
    t.r[regs.ID] = 0x12345678
    with pytest.raises(DriverError, match=r"ID = 0x12345678: not a fluidnpu CSR slave"):
        NpuDriver(t, regs).probe()
    t = StuckNpu(regs)
    t.r[regs.HWCFG2] = regs_for(CFG.replace(b_max=8)).RESET["HWCFG2"]
    with pytest.raises(DriverError, match=r"HWCFG2 = 0x[0-9a-f]{8}, the register module says .*'B_MAX': 8"):
        NpuDriver(t, regs).probe()


def test_a_push_never_taken_times_out_naming_status(regs):
    d = NpuDriver(StuckNpu(regs), regs, timeout_cycles=500)
    with pytest.raises(DriverError, match=r"STATUS = 0x00000001 \(.*'PROG_PENDING': 1.*\): STATUS.PROG_PENDING = 0 "
                                          r"\(the FBE taking the PROG write\) not seen \d+ cycles"):
        d.load_program([0x1234])
    # a second push while pending would be ignored by the hardware: refused before writing
    with pytest.raises(DriverError, match="STATUS.PROG_PENDING = 1"):
        d.push("PROG", 1)


def test_error_flags_raise_and_are_cleared(regs):
    t = StuckNpu(regs)
    t.r[regs.ERROR] = 0b11
    with pytest.raises(DriverError, match=r"ERROR = 0x3 \(BUS, OVERRUN\)"):
        NpuDriver(t, regs).check_errors()
    assert t.r[regs.ERROR_CLEAR] == 0b11


def test_values_that_do_not_fit_and_wrong_modules_are_refused(regs, tmp_path):
    d = NpuDriver(StuckNpu(regs), regs)
    with pytest.raises(DriverError, match=r"PREEMPT = 0x8: does not fit the window's 3 bits"):
        d.preempt(8)
    with pytest.raises(DriverError, match=r"ADMIT tag = 70000: must be from 0 to 65535"):
        d.admit(70000, 0)
    with pytest.raises(DriverError, match=r"program of 17 entries: the NPU holds 16"):
        d.load_program([0] * 17)
    with pytest.raises(DriverError, match="the register module is the core's"):
        NpuDriver(StuckNpu(regs), regs_for(CFG, "core"))
    with pytest.raises(TypeError, match="must implement read32"):
        NpuDriver(object(), regs)
    with pytest.raises(DriverError, match="no such file"):
        load_regs(tmp_path / "nope_regs.py")
    (tmp_path / "x_regs.py").write_text("A = 1\n")
    with pytest.raises(DriverError, match="lacks TOP"):
        load_regs(tmp_path / "x_regs.py")


def test_generated_file_and_in_memory_module_agree(regs, tmp_path):
    from click.testing import CliRunner
    from fluidnpu.cli import main
    out = tmp_path / "npu_regs.py"
    sets = [a for k, v in CFG.to_dict().items() if k in ("tc", "tp", "tr", "x_buf_elems", "w_buf_elems",
                                                           "mem_bytes", "b_max", "net_entries", "max_classes")
            for a in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(main, ["regmap", "--format", "py", "--top", "npu", "--out", str(out), *sets])
    assert r.exit_code == 0, r.output
    f = load_regs(out)
    assert f.REGS == regs.REGS and f.RESET == regs.RESET and f.WINDOWS == regs.WINDOWS
