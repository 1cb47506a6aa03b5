"""Named memory timings (fluidnpu.sim.memory) as a configuration of the mapper's tables and
of ``fluidnpu serve``: the board's SDRAM preset comes from its measured figures, reaches
the cycle model through every path, and a bad name is refused."""
import json
import math

import pytest
from click.testing import CliRunner

from fluidnpu.cli import main
from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.runner import MemTiming
from fluidnpu.sched import mapper
from fluidnpu.sim.memory import MEMORY_PRESETS, MemoryPresetError, memory_preset, memory_timing
from fluidnpu.sim.serving import tables
from fluidnpu.sim.workloads import zoo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    tables.clear_cache()
    yield
    tables.clear_cache()


def test_presets_and_their_source():
    assert memory_timing("test") == MemTiming()
    sd = memory_preset("ulx3s-sdram")
    m = sd.measured
    # the cycle model's figures are the measured sequential ones rounded up, not typed twice
    assert sd.timing == MemTiming(latency=math.ceil(m["read_sequential"]),
                                  interval=math.ceil(max(m["read_sequential"], m["write_sequential"])))
    assert sd.timing.interval > 1 and m["read_random"] > m["read_sequential"]
    with pytest.raises(MemoryPresetError, match=r"memory = 'ddr5'.*test, ulx3s-sdram"):
        memory_preset("ddr5")


def test_tables_take_the_memory_timing(cache):
    """The board's SDRAM makes every op of the tables longer, and the table cache keeps the
    two apart (a cache keyed without the memory would hand back the first table)."""
    m = zoo.resolve_model("tiny")
    sd = memory_timing("ulx3s-sdram")
    fast = tables.mapper_table(m, "fluid")
    slow = tables.mapper_table(m, "fluid", mem=sd)
    assert slow == mapper.map_model(HwConfig(), m, "fluid", mem=sd).latency_table()
    assert slow.batch1_latency_cycles() > 2 * fast.batch1_latency_cycles()
    assert tables.cache_key(m, "fluid", HwConfig(), 16) != tables.cache_key(m, "fluid", HwConfig(), 16, sd)
    tables.clear_cache()
    assert tables.mapper_table(m, "fluid", mem=sd) == slow            # read back from the file cache


@pytest.mark.parametrize("hardware", ["fluid", "fbe"])
def test_serve_memory_option(cache, hardware):
    """`serve --memory ulx3s-sdram` on the same trace: every request takes longer than with the
    tests' memory (the tables path and the FBE mode both take the option)."""
    out = {}
    for mem in ("test", "ulx3s-sdram"):
        r = CliRunner().invoke(main, ["serve", "--hardware", hardware, "--requests", "12", "--memory", mem, "--json"])
        assert r.exit_code == 0, r.output
        out[mem] = json.loads(r.output)
        assert out[mem]["memory"] == mem and out[mem]["memory_timing"] == MEMORY_PRESETS[mem].timing.to_dict()
    assert out["ulx3s-sdram"]["summary"]["mean_ms"] > 2 * out["test"]["summary"]["mean_ms"]


def test_serve_refuses_an_unknown_memory():
    r = CliRunner().invoke(main, ["serve", "--memory", "hbm3", "--requests", "5"])
    assert r.exit_code == 2
    assert "--memory" in r.output and "'hbm3'" in r.output and "ulx3s-sdram" in r.output
