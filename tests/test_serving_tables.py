"""The file cache of the mapper's latency tables: keyed by model, hardware, configuration and code; atomic."""
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.sched import mapper
from fluidnpu.sim.serving import tables
from fluidnpu.sim.workloads import zoo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(tables.CACHE_ENV, raising=False)
    tables.clear_cache()
    yield tmp_path / "xdg" / "fluidnpu" / "latency_tables"
    tables.clear_cache()


def _no_mapping(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("mapped although the table is cached")
    monkeypatch.setattr(mapper, "map_model", refuse)


def test_tables_are_cached_on_disk_and_read_back(cache, monkeypatch):
    m = zoo.resolve_model("tiny")
    t = tables.mapper_table(m, "fluid")
    assert tables.cache_dir() == cache
    files = sorted(cache.iterdir())
    assert [f.name.split("-")[:2] for f in files] == [["tiny", "fluid"]]      # no temporary file left behind
    assert t == mapper.map_model(HwConfig(), m, "fluid").latency_table()
    tables.clear_cache()
    _no_mapping(monkeypatch)
    t2 = tables.mapper_table(m, "fluid")
    assert t2 == t and t2.source == t.source and t2 is not t


def test_cache_key_covers_configuration_and_clock(cache):
    m = zoo.resolve_model("tiny")
    a = tables.mapper_table(m, "rbatch")
    b = tables.mapper_table(m, "rbatch", HwConfig(clock_mhz=50.0))
    c = tables.mapper_table(m, "fluid")
    assert a.clock_mhz == 100.0 and b.clock_mhz == 50.0 and c.hardware == "fluid"
    keys = {tables.cache_key(m, "rbatch", HwConfig(), 16), tables.cache_key(m, "rbatch", HwConfig(clock_mhz=50.0), 16),
            tables.cache_key(m, "fluid", HwConfig(), 16), tables.cache_key(m, "rbatch", HwConfig(), 8)}
    assert len(keys) == 4 and len(list(cache.iterdir())) == 3


def test_a_broken_entry_is_recomputed_and_replaced(cache):
    m = zoo.resolve_model("tiny")
    t = tables.mapper_table(m, "rbatch")
    (f,) = cache.iterdir()
    f.write_text('{"key": "')                                 # a torn or foreign file
    tables.clear_cache()
    assert tables.mapper_table(m, "rbatch") == t
    assert f.read_text().startswith('{"key": "') and len(f.read_text()) > 100


def test_cache_can_be_switched_off(cache, monkeypatch):
    monkeypatch.setenv(tables.CACHE_ENV, "0")
    tables.mapper_table(zoo.resolve_model("tiny"), "rbatch")
    assert not cache.exists()
