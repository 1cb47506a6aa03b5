"""HwConfig: validation rules, TOML loading, --set overrides and derived values."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidnpu.hw.config import ConfigError, HwConfig, load_hw_config

# (changes to the default, the field the error must name, its value)
BAD = [
    ({"tc": "8"}, "tc", "8"),
    ({"tp": 8.0}, "tp", 8.0),
    ({"tr": True}, "tr", True),
    ({"clock_mhz": 0}, "clock_mhz", 0),
    ({"clock_mhz": -5.0}, "clock_mhz", -5.0),
    ({"clock_mhz": "100"}, "clock_mhz", "100"),
    ({"clock_mhz": True}, "clock_mhz", True),
    ({"tc": 3}, "tc", 3),
    ({"tc": 0}, "tc", 0),
    ({"tc": 128, "x_buf_elems": 1 << 16, "w_buf_elems": 1 << 14}, "tc", 128),
    ({"tp": 6}, "tp", 6),
    ({"tp": 128}, "tp", 128),
    ({"tr": 12}, "tr", 12),
    ({"tr": 512}, "tr", 512),
    ({"data_width": 3}, "data_width", 3),
    ({"data_width": 17}, "data_width", 17),
    ({"acc_width": 15}, "acc_width", 15),
    ({"data_width": 12, "acc_width": 23}, "acc_width", 23),
    ({"acc_width": 33}, "acc_width", 33),
    ({"mem_bytes": 6}, "mem_bytes", 6),
    ({"mem_bytes": 2}, "mem_bytes", 2),
    ({"mem_bytes": 128}, "mem_bytes", 128),
    ({"tc": 4, "mem_bytes": 8}, "mem_bytes", 8),
    ({"tc": 2, "mem_bytes": 4}, "mem_bytes", 4),
    # a 8-element beat on tp = 2 lanes: W words of 4 lines, more than 32 elements of W hold
    ({"tp": 2, "mem_bytes": 8, "w_buf_elems": 32}, "w_buf_elems", 32),
    ({"x_buf_elems": 10000}, "x_buf_elems", 10000),
    ({"x_buf_elems": 32}, "x_buf_elems", 32),
    ({"w_buf_elems": 5000}, "w_buf_elems", 5000),
    ({"w_buf_elems": 8}, "w_buf_elems", 8),
    ({"tr": 256, "x_buf_elems": 2048}, "x_buf_elems", 2048),
    ({"rd_outstanding": 1}, "rd_outstanding", 1),
    ({"rd_outstanding": 257}, "rd_outstanding", 257),
    ({"stage_entries": 1}, "stage_entries", 1),
    ({"stage_entries": 65}, "stage_entries", 65),
    ({"mult_width": 3}, "mult_width", 3),
    ({"mult_width": 33}, "mult_width", 33),
    ({"addr_width": 15}, "addr_width", 15),
    ({"addr_width": 49}, "addr_width", 49),
    ({"dim_width": 7}, "dim_width", 7),
    ({"dim_width": 25}, "dim_width", 25),
]


@pytest.mark.parametrize("changes,field,value", BAD, ids=[str(c) for c, _, _ in BAD])
def test_rule_rejects_bad_value_naming_field_and_value(changes, field, value):
    with pytest.raises(ConfigError) as e:
        HwConfig(**changes)
    assert f"{field} = {value!r}" in str(e.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_defaults_are_valid_and_as_documented():
    cfg = HwConfig()
    # the 8 x 8 since 5 Dec 2026 (the 8 x 4 from 4 Dec, the 4 x 4 before)
    assert (cfg.tc, cfg.tp, cfg.tr) == (8, 8, 32)
    assert (cfg.x_buf_elems, cfg.w_buf_elems) == (131072, 32768)
    assert (cfg.data_width, cfg.acc_width, cfg.mem_bytes) == (8, 32, 8)


def test_mem_bytes_derived_from_the_array_unless_given():
    """mem_bytes unset: the widest beat the banking takes (min(tc, tp) elements), 4 to 8
    bytes; a variant of another size derives it again, a given width is kept."""
    assert [HwConfig(**kw).mem_bytes for kw in ({}, {"tp": 4}, {"tc": 4, "tp": 4}, {"tc": 16, "tp": 16},
                                                {"data_width": 12, "acc_width": 24})] == [8, 4, 4, 8, 8]
    assert HwConfig().mem_bytes_derived and not HwConfig(mem_bytes=8).mem_bytes_derived
    assert HwConfig() == HwConfig(mem_bytes=8)
    assert HwConfig().replace(tc=4).mem_bytes == 4
    assert HwConfig().with_overrides(["tp=4"]) == HwConfig(tp=4, mem_bytes=4)
    assert HwConfig(tp=4).replace(tp=8).mem_bytes == 8
    with pytest.raises(ConfigError, match=r"mem_bytes = 8: holds 8 elements per beat.*at most tc = 4"):
        HwConfig(mem_bytes=8).replace(tc=4)
    assert not HwConfig.from_dict(HwConfig().to_dict()).mem_bytes_derived
    # too few lanes for the narrowest port: the message names tc and tp, not the derived width
    with pytest.raises(ConfigError, match=r"tc = 2, tp = 8: the memory port is at least 4 bytes"):
        HwConfig(tc=2)
    # a beat wider than a PE's lanes is taken (the W words widen), as long as tc holds it
    assert HwConfig(tp=2).mem_bytes == 4 and HwConfig(tp=2).w_word_lines == 2
    assert HwConfig(tc=16, tp=8, mem_bytes=16).w_word_lines == 2
    assert HwConfig(tc=8, tp=2, mem_bytes=8).w_word_lines == 4 and HwConfig().w_word_lines == 1


@pytest.mark.parametrize("changes", [
    {"tc": 2, "tp": 2, "tr": 1, "mem_bytes": 4, "data_width": 16, "acc_width": 32,
     "x_buf_elems": 4, "w_buf_elems": 4},
    {"tc": 64, "tp": 64, "tr": 256, "x_buf_elems": 1 << 20, "w_buf_elems": 1 << 12,
     "mem_bytes": 64},
    {"data_width": 4, "acc_width": 8, "mult_width": 4, "addr_width": 16, "dim_width": 8,
     "rd_outstanding": 2, "stage_entries": 2, "clock_mhz": 1},
    {"rd_outstanding": 256, "stage_entries": 64, "mult_width": 32, "addr_width": 48, "dim_width": 24,
     "clock_mhz": 250.5},
])
def test_limits_are_accepted(changes):
    cfg = HwConfig(**changes)
    assert all(getattr(cfg, k) == v for k, v in changes.items())


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HwConfig().tc = 4


def test_derived_values_of_default():
    cfg = HwConfig()
    assert cfg.lanes == 64
    assert cfg.elem_bytes == 1
    assert cfg.elems_per_beat == 8                          # min(tc, tp, mem_bytes)
    assert cfg.x_depth == 2048 and cfg.w_depth == 512
    assert cfg.bp_choices == (1, 2, 4, 8) and cfg.k_choices == (1, 2, 4, 8)
    assert len(cfg.policies) == 16 and len(set(cfg.policies)) == 16
    assert (cfg.data_min, cfg.data_max) == (-128, 127)
    # X holds 131072 / 32 rows; W 32768 / 8 PEs * k
    assert cfg.chunk_max(1) == 4096 and cfg.chunk_max(8) == 4096
    assert cfg.tr_min == 16 and cfg.tile_rows(2304, 1) == 32 and cfg.tile_rows(4608, 2) == 16
    assert cfg.ns_per_cycle() == pytest.approx(10.0)


def test_tile_rows():
    """Tall row tiles, worked by hand on the 4 x 4 (the default until 4 Dec 2026: X 65536,
    W 16384 elements per slot, tr 32, tr_min = 2 * 16 lanes / 4 elements per beat = 8):
    fewer rows when they let X hold all of P (both buffers: one chunk; X alone: X resident
    across the column tiles, W chunked)."""
    cfg = HwConfig(tc=4, tp=4, mem_bytes=4, x_buf_elems=65536, w_buf_elems=16384)
    assert cfg.tr_min == 8
    # X holds 65536 / rows elements of P; W holds 16384 / 4 * k
    assert cfg.tile_rows(2048, 1) == 32 and cfg.chunk_max(1, 32) == 2048
    assert cfg.tile_rows(2049, 1) == 16 and cfg.chunk_max(1, 16) == 4096
    assert cfg.tile_rows(2304, 1) == 16          # ResNet-18 layer3: one chunk
    assert cfg.tile_rows(4096, 1) == 16
    assert not cfg.x_resident(4096, 1)
    # W holds 4096 at k = 1: chunks of W, X resident at the first height that holds P
    assert cfg.tile_rows(4097, 1) == 8 and cfg.chunk_max(1, 8) == 4096 and cfg.x_resident(4097, 1)
    assert cfg.tile_rows(8192, 1) == 8 and cfg.x_resident(8192, 1)
    assert cfg.tile_rows(8193, 1) == 32 and not cfg.x_resident(8193, 1)  # X cannot hold it
    assert cfg.tile_rows(4608, 2) == 8 and cfg.chunk_max(2, 8) == 8192
    assert cfg.tile_rows(8192, 4) == 8 and not cfg.x_resident(8192, 4)   # one chunk
    assert cfg.tile_rows(8193, 4) == 32          # X holds 8192 at tr_min rows: chunks
    assert not cfg.x_resident(8193, 4)
    # the 8 x 8 (X 131072, W 4096 per PE at k = 1): ResNet-18's conv5_x resident at 16 rows
    big = HwConfig()
    assert big.tile_rows(4608, 1) == 16 and big.x_resident(4608, 1)
    assert big.chunk_sizes(4608, 1, 16) == (2048, 2560)
    # tr_min never above tr; the 8 x 8 (64 lanes, 8 per beat) stops at 16
    assert HwConfig(tc=8, tp=8, mem_bytes=8).tr_min == 16
    assert HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4).tr_min == 8
    assert HwConfig(tc=16, tp=16, mem_bytes=16).tr_min == 32


def test_tile_rows_short_rows():
    """Short rows (a row's reduction one cycle of the stacked lanes, P <= k*tp) take
    tr_max = 2*tr rows, when the X buffer holds 2*tr rows of tc*tp elements."""
    cfg = HwConfig(tp=4)                                # 8 x 4, tr 32, X 131072
    assert cfg.tr_max == 64
    assert cfg.tile_rows(32, 8) == 64 and cfg.tile_rows(33, 8) == 32
    assert cfg.tile_rows(4, 1) == 64 and cfg.tile_rows(5, 1) == 32
    assert cfg.tile_rows(16, 4) == 64 and cfg.tile_rows(17, 4) == 32
    assert cfg.tile_rows(1, 2) == 64
    # X of exactly tr rows of lanes: no taller tiles
    tight = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=128, w_buf_elems=512, mem_bytes=4)
    assert tight.tr_max == 8 and tight.tile_rows(1, 1) == 8 and tight.tile_rows(16, 4) == 8
    # the chunk the buffers hold at tr_max rows covers every short row
    for c in (cfg, HwConfig(tc=8, tp=8, mem_bytes=8), HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024,
                                                                   w_buf_elems=512)):
        for lk in range(c.tc.bit_length()):
            k = 1 << lk
            assert c.tile_rows(k * c.tp, k) == c.tr_max
            assert c.chunk_max(k, c.tr_max) >= k * c.tp


def test_row_tile_sizes():
    """Full tiles, then the last two balanced when the remainder is under half a tile."""
    rts = HwConfig.row_tile_sizes
    assert rts(49, 16) == (16, 16, 8, 9)         # ResNet-18 layer4 at batch 1 on the 8 x 4
    assert rts(48, 16) == (16, 16, 16)
    assert rts(56, 16) == (16, 16, 16, 8)        # remainder of half a tile: as it is
    assert rts(55, 16) == (16, 16, 8, 15) and rts(57, 16) == (16, 16, 16, 9)
    assert rts(20, 16) == (8, 12)                # two tiles: the half tile first
    assert rts(5, 16) == (5,) and rts(16, 16) == (16,)
    assert rts(3, 2) == (2, 1) and rts(4, 1) == (1, 1, 1, 1)   # no half of 2 or 1 rows
    from itertools import product
    for R, T in product(range(1, 80), (1, 2, 4, 8, 16, 32)):
        sizes = rts(R, T)
        assert sum(sizes) == R and len(sizes) == -(-R // T) and max(sizes) <= T, (R, T, sizes)
        if len(sizes) >= 2:
            assert min(sizes) >= T // 2, (R, T, sizes)
            assert all(s == T for s in sizes[:-2]), (R, T, sizes)
        for bp in (1, 2, 4, 8):                  # the array's groups add up the same
            if bp <= T:
                plain = (T,) * (len(sizes) - 1) + (R - (len(sizes) - 1) * T,)
                assert sum(-(-s // bp) for s in sizes) == sum(-(-s // bp) for s in plain)


def test_chunk_sizes():
    """Full chunks, then the last two balanced when the remainder is under half a chunk."""
    big = HwConfig(tc=16, tp=8, mem_bytes=16, x_buf_elems=65536, w_buf_elems=65536)
    assert big.chunk_max(1) == 2048
    assert big.chunk_sizes(4608, 1) == (2048, 1024, 1536)     # ResNet-18 conv5_x: 2048, 2048, 512
    assert big.chunk_sizes(4096 + 1024, 1) == (2048, 2048, 1024)   # half a chunk left: as it is
    assert big.chunk_sizes(2048 + 100, 1) == (1024, 1124)     # two chunks: the half one first
    assert big.chunk_sizes(2048, 1) == (2048,) and big.chunk_sizes(300, 1) == (300,)
    # a chunk of one or two cycles of the widest unit is not halved
    tiny = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=128, w_buf_elems=512, mem_bytes=4)
    assert tiny.chunk_max(4) == 16 and not tiny.chunk_balances(4)
    assert tiny.chunk_sizes(40, 4) == (16, 16, 8)
    for cfg in (big, HwConfig(), tiny):
        for k in cfg.k_choices:
            cm = cfg.chunk_max(k)
            S = cfg.tp * k
            for P in range(1, 5 * cm, max(1, cm // 16) + 3):
                sizes = cfg.chunk_sizes(P, k)
                assert sum(sizes) == P and len(sizes) == -(-P // cm) and max(sizes) <= cm
                assert all(s == cm for s in sizes[:-2]), (P, k, sizes)
                if len(sizes) >= 2 and cfg.chunk_balances(k):
                    assert min(sizes) >= cm // 2, (P, k, sizes)
                # every chunk but the last starts a whole number of cycles and beats in
                assert all(s % S == 0 and s % cfg.elems_per_beat == 0 for s in sizes[:-1])


def test_derived_values_of_wide_data():
    cfg = HwConfig(data_width=12, acc_width=32, tc=4, tp=16, mem_bytes=8)
    assert cfg.elem_bytes == 2 and cfg.elems_per_beat == 4
    assert (cfg.data_min, cfg.data_max) == (-2048, 2047)
    assert cfg.policies == tuple((bp, k) for bp in (1, 2, 4, 8, 16) for k in (1, 2, 4))
    assert cfg.chunk_max(1) == min(131072 // 32, 32768 // 4)


def test_key_ignores_clock_only():
    cfg = HwConfig()
    assert cfg.key() == cfg.replace(clock_mhz=200.0).key()
    assert cfg.key() != cfg.replace(tr=16).key()


def test_replace_validates():
    with pytest.raises(ConfigError, match="tp = 5"):
        HwConfig().replace(tp=5)


# -- TOML ------------------------------------------------------------------------------

def test_load_none_is_default():
    assert load_hw_config(None) == HwConfig()


def test_load_hw_table(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text("[hw]\ntc = 4\ntp = 4\nmem_bytes = 4\nclock_mhz = 250.0\n")
    assert load_hw_config(p) == HwConfig(tc=4, tp=4, mem_bytes=4, clock_mhz=250.0)


def test_load_top_level_fields(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text("tr = 32\n")
    assert load_hw_config(str(p)) == HwConfig(tr=32)


def test_load_unknown_field_names_it(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text("[hw]\ntc = 4\npes = 8\n")
    with pytest.raises(ConfigError, match="unknown field.*pes") as e:
        load_hw_config(p)
    assert str(p) in str(e.value)


def test_load_bad_toml(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text("[hw\ntc = 4\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_hw_config(p)


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_hw_config(tmp_path / "nope.toml")


def test_load_hw_not_a_table(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text("hw = 3\n")
    with pytest.raises(ConfigError, match=r"\[hw\] must be a table"):
        load_hw_config(p)


def test_load_validates_values(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text('[hw]\ntc = "eight"\n')
    with pytest.raises(ConfigError, match="tc = 'eight': must be an integer"):
        load_hw_config(p)


def test_example_files(repo_root):
    assert load_hw_config(repo_root / "examples" / "hw_default.toml") == HwConfig()
    big = load_hw_config(repo_root / "examples" / "hw_8x8.toml")
    assert big == HwConfig(tc=8, tp=8, mem_bytes=8)
    small = load_hw_config(repo_root / "examples" / "hw_small.toml")
    assert small == HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4)


# -- --set overrides -------------------------------------------------------------------

def test_with_overrides():
    cfg = HwConfig().with_overrides(["tc=4", " tp = 0x4 ", "mem_bytes=4", "clock_mhz=133.3"])
    assert (cfg.tc, cfg.tp, cfg.mem_bytes, cfg.clock_mhz) == (4, 4, 4, 133.3)
    assert HwConfig().with_overrides([]) == HwConfig()


@pytest.mark.parametrize("item,pattern", [
    ("tc", "'tc': expected name=value"),
    ("pes=4", "pes: unknown field"),
    ("tc=four", "tc='four': not a number"),
    ("tc=3", "tc = 3: must be a power of two"),
])
def test_with_overrides_errors(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        HwConfig().with_overrides([item])


# -- property: validation either accepts or raises ConfigError, and accepted configs
#    round-trip through to_dict/from_dict ---------------------------------------------

_small_ints = st.integers(min_value=-2, max_value=300)


@settings(max_examples=300, deadline=None)
@given(tc=st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64, 128]), tp=st.sampled_from([0, 1, 2, 4, 5, 8, 64]),
       tr=st.sampled_from([1, 7, 8, 16, 256, 512]), data_width=_small_ints, acc_width=_small_ints,
       x_buf=st.sampled_from([16, 1000, 1024, 16384, 1 << 20]),
       w_buf=st.sampled_from([16, 512, 8192]), mem_bytes=st.sampled_from([0, 2, 4, 6, 8, 16, 64]))
def test_validation_is_total(tc, tp, tr, data_width, acc_width, x_buf, w_buf, mem_bytes):
    try:
        cfg = HwConfig(tc=tc, tp=tp, tr=tr, data_width=data_width, acc_width=acc_width,
                       x_buf_elems=x_buf, w_buf_elems=w_buf, mem_bytes=mem_bytes)
    except ConfigError:
        return
    assert HwConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.elems_per_beat <= min(cfg.tc, cfg.tp)
    assert cfg.x_depth >= cfg.tr and cfg.w_depth >= 1
    assert len(cfg.policies) == len(cfg.bp_choices) * len(cfg.k_choices)
