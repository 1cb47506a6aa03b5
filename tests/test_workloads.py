"""Topology CSV parser, exit-rate families, model TOML loader and writer."""
import json
import math
import re
import tomllib

import pytest
from hypothesis import given, settings, strategies as st

from fluidnpu.sim.workloads import (ConvSpec, EEModel, ExitHead, GemmLayer, GemmSpec, WorkloadError,
                                    conv_output_size, format_topology, from_conditional, from_counts,
                                    geometric, load_model, model_from_dict, model_to_toml,
                                    parse_topology, parse_topology_text, read_counts, save_model,
                                    to_conditional)

CONV_HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ topology CSV

def test_conv_row_lowering_scalesim_convention(tmp_path):
    p = write(tmp_path, "t.csv", CONV_HEADER + "\nconv1, 230, 230, 7, 7, 3, 64, 2,\n")
    (l,) = parse_topology(p)
    assert (l.name, l.r, l.p, l.c, l.kind) == ("conv1", 112 * 112, 7 * 7 * 3, 64, "conv")
    assert l.macs == 112 * 112 * 147 * 64


def test_gemm_row_follows_scalesim_mnk(tmp_path):
    # SCALE-Sim GEMM mode: (M x K) . (K x N)  ->  r = M, p = K, c = N
    p = write(tmp_path, "g.csv", "Layer, M, N, K,\nfc, 3, 10, 64,\n")
    (l,) = parse_topology(p)
    assert (l.r, l.p, l.c, l.kind) == (3, 64, 10, "gemm")


def test_gemm_header_column_order_is_honoured(tmp_path):
    p = write(tmp_path, "g.csv", "Layer, M, K, N\nfc, 3, 64, 10\n")
    (l,) = parse_topology(p)
    assert (l.r, l.p, l.c) == (3, 64, 10)


def test_blank_lines_comments_whitespace_and_no_trailing_comma():
    text = "\n# a comment\n   \n  conv1 ,  8 , 8, 3,3, 4 , 16 , 1  \n\nfc,1,10,1024\n  # trailing\n"
    rows = parse_topology_text(text, "x.csv")
    assert rows == [ConvSpec("conv1", 8, 8, 3, 3, 4, 16, 1), GemmSpec("fc", 1, 10, 1024)]
    assert rows[0].to_layer().r == 36


@pytest.mark.parametrize("padding, out", [("1", 9), ("same", 4), ("valid", 7), ("0", 7), ("", 7)])
def test_padding_column(padding, out):
    # 8x8 input, 2x2 filter, stride 1 (valid = 7) or stride 2 for 'same' (ceil(8/2))
    stride = 2 if padding == "same" else 1
    (row,) = parse_topology_text(f"c, 8, 8, 2, 2, 3, 5, {stride}, {padding},")
    assert row.out_hw == (out, out)
    assert row.to_layer().r == out * out


def test_same_padding_matches_ceil_division():
    for size in range(1, 40):
        for stride in (1, 2, 3):
            assert conv_output_size(size, 3, stride, "same") == math.ceil(size / stride)


def test_groups_column_depthwise():
    (row,) = parse_topology_text("dw, 114, 114, 3, 3, 32, 32, 1, 0, 32,")
    l = row.to_layer()
    assert (l.r, l.p, l.c, l.groups) == (112 * 112, 9, 32, 32)
    assert l.macs == 112 * 112 * 9 * 32      # exact depthwise MACs, not 32x more


def test_round_trip_format_parse():
    rows = [ConvSpec("a", 32, 32, 3, 3, 3, 16, 1), ConvSpec("b", 30, 30, 3, 3, 16, 16, 2, padding=1),
            ConvSpec("c", 16, 16, 3, 3, 16, 16, 1, padding="same", groups=16)]
    assert parse_topology_text(format_topology(rows)) == rows
    gemms = [GemmSpec("x", 4, 8, 16), GemmSpec("y", 1, 10, 8)]
    assert parse_topology_text(format_topology(gemms)) == gemms
    mixed = [rows[0], gemms[0]]
    assert parse_topology_text(format_topology(mixed)) == mixed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(1, 7), st.integers(1, 64), st.integers(1, 64),
                          st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=6))
def test_round_trip_property(specs):
    rows = []
    for i, (size, f, ch, nf, s, pad) in enumerate(specs):
        size = max(size, f)                   # keep the filter inside the IFMAP
        rows.append(ConvSpec(f"l{i}", size, size + 1, f, f, ch, nf, s, padding=pad))
    back = parse_topology_text(format_topology(rows))
    assert back == rows
    for r in back:
        oh, ow = r.out_hw
        assert oh == (r.ifmap_h + 2 * r.padding - r.filter_h) // r.stride + 1 and ow >= oh
        assert r.to_layer().p == r.filter_h * r.filter_w * r.channels


BAD_ROWS = [
    # (row, field in the message, value in the message)
    ("conv1, 224, 224, 3, 3, 3, 64,", "columns", "6"),
    ("conv1, 224, 224, 3, 3, 3, 64, 1, 0, 1, 9,", "columns", "10"),
    ("conv1, 224, 22x, 3, 3, 3, 64, 1,", "IFMAP Width", "22x"),
    ("conv1, 224, 224, 3, 3.5, 3, 64, 1,", "Filter Width", "3.5"),
    ("conv1, 224, 224, 3, 3, 0, 64, 1,", "Channels", "0"),
    ("conv1, 224, 224, 3, 3, 3, -64, 1,", "Num Filter", "-64"),
    ("conv1, 224, 224, 3, 3, 3, 64, 0,", "Strides", "0"),
    ("conv1, 5, 224, 7, 3, 3, 64, 1,", "Filter Height", "7"),
    ("conv1, 224, 2, 3, 3, 3, 64, 1,", "Filter Width", "3"),
    ("conv1, 224, 224, 3, 3, 3, 64, 1, -1,", "Padding", "-1"),
    ("conv1, 224, 224, 3, 3, 3, 64, 1, full,", "Padding", "full"),
    ("conv1, 224, 224, 3, 3, 6, 64, 1, 0, 4,", "Groups", "4"),
    ("conv1, 224, 224, 3, 3, 6, 64, 1, 0, 0,", "Groups", "0"),
]


@pytest.mark.parametrize("row, field, value", BAD_ROWS)
def test_malformed_conv_row_names_file_line_field_value(tmp_path, row, field, value):
    p = write(tmp_path, "bad.csv", f"# comment\n{CONV_HEADER}\nok, 8, 8, 3, 3, 3, 4, 1,\n{row}\n")
    with pytest.raises(WorkloadError) as ei:
        parse_topology(p)
    e = ei.value
    msg = str(e)
    assert isinstance(e, ValueError)
    assert str(p) in msg and ":4:" in msg, msg
    assert field in msg and value in msg, msg
    assert (e.line, e.field) == (4, field)
    assert "must" in msg or "needs" in msg       # says what is allowed


def test_filter_larger_than_ifmap_message_says_the_limit():
    with pytest.raises(WorkloadError, match=r"Filter Height = '7'.*at most 5"):
        parse_topology_text("c, 5, 9, 7, 3, 1, 1, 1,", "f.csv")
    # with padding 1 the same filter fits a 5x5 map
    (row,) = parse_topology_text("c, 5, 9, 7, 3, 1, 1, 1, 1,", "f.csv")
    assert row.out_hw == (1, 9)


@pytest.mark.parametrize("text, line, field, value", [
    ("Layer, M, N, K,\nfc, 1, 10,\n", 2, "columns", "2"),
    ("Layer, M, N, K,\nfc, 1, 0, 5,\n", 2, "N", "0"),
    ("Layer, M, N, K,\nfc, one, 10, 5,\n", 2, "M", "one"),
    ("Layer, M, N, K,\nfc, 1, 10, 5,\nfc, 1, 10, 5,\n", 3, "Layer name", "already used on line 2"),
    ("Layer, M, N, K,\n, 1, 10, 5,\n", 2, "Layer name", "''"),
    ("fc, 1, 10, 5\nconv, 8, 8, 3, 3, 1, 1\n", 2, "columns", "6"),
])
def test_malformed_gemm_rows(text, line, field, value):
    with pytest.raises(WorkloadError) as ei:
        parse_topology_text(text, "g.csv")
    msg = str(ei.value)
    assert ei.value.field == field and f"{field} = " in msg and value in msg and f"g.csv:{line}:" in msg, msg


def test_unknown_header_and_empty_file():
    with pytest.raises(WorkloadError, match="header"):
        parse_topology_text("name, a, b\n", "h.csv")
    with pytest.raises(WorkloadError, match="no layer rows"):
        parse_topology_text("# nothing\n" + CONV_HEADER + "\n", "e.csv")


def test_missing_file_is_a_workload_error(tmp_path):
    with pytest.raises(WorkloadError, match="cannot read"):
        parse_topology(tmp_path / "nope.csv")


# ------------------------------------------------------------------ exit rates

@pytest.mark.parametrize("n, p", [(1, 0.5), (3, 0.5), (4, 1.0), (5, 1.5), (6, 3.0)])
def test_geometric_sums_to_one_with_ratio_p(n, p):
    q = geometric(n, p)
    assert len(q) == n and math.isclose(sum(q), 1.0, abs_tol=1e-12)
    for a, b in zip(q, q[1:]):
        assert math.isclose(b / a, p, rel_tol=1e-12)


def test_geometric_extreme_parameters_do_not_overflow():
    q = geometric(60, 1e6)
    assert math.isclose(sum(q), 1.0) and q[-1] > 0.99
    with pytest.raises(WorkloadError, match="> 0"):
        geometric(3, 0)


def test_conditional_rates():
    q = from_conditional([0.5, 0.5], 3)
    assert q == pytest.approx((0.5, 0.25, 0.25))
    assert from_conditional([0.5, 0.5, 1.0], 3) == pytest.approx(q)
    assert to_conditional(q) == pytest.approx((0.5, 0.5, 1.0))
    with pytest.raises(WorkloadError, match=r"conditional\[2\]"):
        from_conditional([0.5, 0.5, 0.9], 3)
    with pytest.raises(WorkloadError, match=r"conditional\[0\] = 1.5"):
        from_conditional([1.5, 0.5], 3)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_conditional_and_back(rates):
    q = from_conditional(rates, len(rates) + 1)
    assert math.isclose(sum(q), 1.0) and min(q) >= 0
    EEModel("m", tuple(GemmLayer(f"l{i}", 1, 1, 1) for i in range(len(rates) + 1)),
            tuple(ExitHead(i, ()) for i in range(len(rates))), q)     # accepted by the model
    # the conditional rate is recovered wherever a sample can still reach the exit
    back = to_conditional(q)
    alive = 1.0
    for c, b in zip(rates, back):
        if alive > 1e-9:
            assert b == pytest.approx(c, abs=1e-6)
        alive *= 1 - c


def test_counts():
    assert from_counts([3, 1, 0, 4]) == (0.375, 0.125, 0.0, 0.5)
    with pytest.raises(WorkloadError, match="sum > 0"):
        from_counts([0, 0])
    with pytest.raises(WorkloadError, match=r"counts\[1\]"):
        from_counts([1, -2])
    with pytest.raises(WorkloadError, match="3 counts"):
        from_counts([1, 2], 3)


def test_read_counts_csv_and_json(tmp_path):
    c = write(tmp_path, "c.csv", "# measured\nexit,count\n1, 30\nfinal, 20\n0, 50\n")
    assert read_counts(c, 3) == ((50, 30, 20), "")
    s = write(tmp_path, "s.csv", "50\n30\n20\n")
    assert read_counts(s, 3)[0] == (50, 30, 20)
    j = write(tmp_path, "c.json", json.dumps({"counts": [5, 5], "source": "my run"}))
    assert read_counts(j, 2) == ((5, 5), "my run")
    for text, match in [("0,5\n0,6\n1,1\n", "given twice"), ("0,5\n", "have no count"),
                        ("0,5\n1,x\n", "count = 'x'"), ("7,5\n", "exit = '7'")]:
        with pytest.raises(WorkloadError, match=match):
            read_counts(write(tmp_path, "b.csv", text), 2)


# ------------------------------------------------------------------ model TOML

BASE = """
[model]
name = "m"
num_classes = 10
layers = [
  { name = "a", r = 4, p = 8, c = 16 },
  { name = "b", m = 4, k = 16, n = 32 },
  { name = "c", r = 1, p = 128, c = 10 },
]
"""


def load_text(tmp_path, text, name="m.toml"):
    return load_model(write(tmp_path, name, text))


def test_inline_model_with_pool_fc_head_and_probs(tmp_path):
    m = load_text(tmp_path, BASE + """
[[exits]]
after = "b"
head = "pool-fc"
[exit_rates]
probs = [0.25, 0.75]
source = "test"
""")
    assert [l.name for l in m.layers] == ["a", "b", "c"]
    assert (m.layers[1].r, m.layers[1].p, m.layers[1].c) == (4, 16, 32)       # m, k, n -> r, p, c
    (e,) = m.exits
    assert e.after == 1 and e.layers == (GemmLayer("exit0.fc", 1, 32, 10),)   # p = channels of layer b
    assert m.exit_probs == (0.25, 0.75) and m.source == "test"


def test_after_by_index_and_topology_paths_relative_to_toml(tmp_path):
    sub = tmp_path / "nets"
    sub.mkdir()
    write(sub, "bb.csv", CONV_HEADER + "\nc1, 10, 10, 3, 3, 3, 8, 1,\nc2, 8, 8, 3, 3, 8, 8, 1,\nfc, 1, 1, 1, 1, 288, 5, 1,\n")
    write(sub, "head.csv", "Layer, M, N, K\nhfc, 1, 5, 8\n")
    m = load_text(sub, """
[model]
name = "conv"
topology = "bb.csv"
[[exits]]
after = 0
topology = "head.csv"
[exit_rates]
geometric = 0.5
""")
    assert m.layers[0].r == 64 and m.exits[0].after == 0 and m.exits[0].layers[0].p == 8
    assert m.exit_probs == pytest.approx((2 / 3, 1 / 3))


def test_measured_rates_from_file(tmp_path):
    write(tmp_path, "counts.csv", "exit,count\n0,300\nfinal,700\n")
    m = load_text(tmp_path, BASE + '[[exits]]\nafter = "a"\nhead = "pool-fc"\n'
                  '[exit_rates]\nmeasured = "counts.csv"\n')
    assert m.exit_probs == (0.3, 0.7) and "counts.csv" in m.source


def test_conditional_rates_in_toml(tmp_path):
    m = load_text(tmp_path, BASE + '[[exits]]\nafter = "a"\nhead = "pool-fc"\n'
                  '[[exits]]\nafter = "b"\nhead = "pool-fc"\n[exit_rates]\nconditional = [0.5, 0.2]\n')
    assert m.exit_probs == pytest.approx((0.5, 0.1, 0.4))
    assert m.conditional_exit_prob(1) == pytest.approx(0.2)


def test_layer_params_for_the_rtl(tmp_path):
    m = load_text(tmp_path, BASE + """
[layer_params]
"*" = { relu = true }
b = { mult = 3, shift = 7 }
c = { relu = false }
""")
    a, b, c = m.layers
    assert (a.relu, a.mult, b.relu, b.mult, b.shift, c.relu) == (True, None, True, 3, 7, False)


BAD_TOML = [
    # (extra text, key expected in the message, value expected in the message)
    ('[[exits]]\nafter = "zz"\nhead = "pool-fc"\n[exit_rates]\nprobs = [0.5, 0.5]\n', "exits[0].after", "'zz'"),
    ('[[exits]]\nafter = 2\nhead = "pool-fc"\n[exit_rates]\nprobs = [0.5, 0.5]\n', "exits[0].after", "2"),
    ('[[exits]]\nafter = "a"\nhead = "avg"\n[exit_rates]\nprobs = [0.5, 0.5]\n', "exits[0].head", "'avg'"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\nprobs = [0.5, 0.6]\n', "exit_rates.probs", "0.6"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\nprobs = [1.0]\n', "exit_rates.probs", "[1.0]"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\nprobs = [-0.5, 1.5]\n', "exit_rates.probs[0]", "-0.5"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n', "exit_rates", "None"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\ngeometric = -1\n', "exit_rates.geometric", "-1"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\ngeometric = 1\nprobs = [0.5, 0.5]\n', "exit_rates", "geometric"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\nmeasured = "none.csv"\n', "exit_rates.measured", "'none.csv'"),
    ('[[exits]]\nafter = "b"\nhead = "pool-fc"\n[[exits]]\nafter = "a"\nhead = "pool-fc"\n[exit_rates]\ngeometric = 1\n',
     "exits[1].after", "'a'"),
    ('[[exits]]\nafter = "a"\nhead = "pool-fc"\nhedd = 1\n[exit_rates]\ngeometric = 1\n', "exits[0].hedd", "1"),
    ('[[exits]]\nafter = "a"\n[exit_rates]\ngeometric = 1\n', "exits[0]", "'exit0'"),
    ('[layer_params]\nzz = { relu = true }\n', "layer_params.zz", "relu"),
    ('[layer_params]\na = { relu = 1 }\n', "layer_params.a.relu", "1"),
    ('[layer_params]\na = { shift = 3 }\n', "layer_params.a.shift", "3"),
    ('[exit_rates]\nprobs = [1.0]\nsrc = "x"\n', "exit_rates.src", "'x'"),
]


@pytest.mark.parametrize("extra, key, value", BAD_TOML)
def test_loader_errors_name_file_key_value(tmp_path, extra, key, value):
    with pytest.raises(WorkloadError) as ei:
        load_text(tmp_path, BASE + extra)
    msg = str(ei.value)
    assert str(tmp_path / "m.toml") in msg and f"{key} = " in msg and value in msg, msg


@pytest.mark.parametrize("text, key", [
    ('[model]\nlayers = [{ name = "a", r = 1, p = 1, c = 1 }]\n', "model.name"),
    ('[model]\nname = "x"\n', "model"),
    ('[model]\nname = "x"\nlayers = [{ name = "a", r = 0, p = 1, c = 1 }]\n', "model.layers[0].r"),
    ('[model]\nname = "x"\nlayers = [{ name = "a", r = 1, p = 1 }]\n', "model.layers[0]"),
    ('[model]\nname = "x"\nlayers = [{ name = "a", r = 1, p = 1, c = 1 }, { name = "a", r = 1, p = 1, c = 1 }]\n',
     "model.layers"),
    ('[model]\nname = "x"\ntopology = "missing.csv"\n', "model.topology"),
    ('[model]\nname = "x"\nlayers = [{ name = "a", r = 1, p = 1, c = 1 }]\n[extra]\n', "extra"),
    ('[model]\nname = "x"\nlayers = [{ name = "a", r = 1, p = 1, c = 1, kind = "fc" }]\n', "model.layers[0].kind"),
])
def test_model_table_errors(tmp_path, text, key):
    with pytest.raises(WorkloadError, match=re.escape(f"m.toml: {key} = ")):
        load_text(tmp_path, text)


def test_bad_csv_behind_a_toml_names_both_files(tmp_path):
    write(tmp_path, "bb.csv", "c1, 10, 10, 3, 3, 3, 8, 0,\n")
    with pytest.raises(WorkloadError) as ei:
        load_text(tmp_path, '[model]\nname = "x"\ntopology = "bb.csv"\n')
    msg = str(ei.value)
    assert "m.toml: model.topology = 'bb.csv'" in msg and "bb.csv:1: Strides = '0'" in msg
    assert (ei.value.line, ei.value.field) == (1, "Strides")


def test_invalid_toml_syntax(tmp_path):
    with pytest.raises(WorkloadError, match="m.toml: not valid TOML"):
        load_text(tmp_path, "[model\nname = 1\n")


def test_writer_round_trip(tmp_path):
    m = load_text(tmp_path, BASE + """
[layer_params]
b = { relu = true, mult = -5, shift = 2 }
[[exits]]
name = "early"
after = "a"
layers = [ { name = "h", r = 1, p = 64, c = 10, kind = "conv", groups = 2 } ]
[exit_rates]
probs = [0.1, 0.9]
source = "quote \\" and unicode \u00e9"
""")
    text = model_to_toml(m)
    tomllib.loads(text)
    out = tmp_path / "out" / "w.toml"
    out.parent.mkdir()
    save_model(m, out)
    back = load_model(out)
    assert back == m
    assert back.layers[1].mult == -5 and back.exits[0].layers[0].groups == 2
    assert back.meta["exit_names"] == ["early"] and back.source.endswith("\u00e9")


def test_model_from_dict_without_a_file():
    m = model_from_dict({"model": {"name": "d", "layers": [{"name": "x", "r": 2, "p": 3, "c": 4}]}})
    assert m.exit_probs == (1.0,) and m.exits == () and m.layers[0].macs == 24


def test_model_helpers():
    layers = tuple(GemmLayer(f"l{i}", 1, 10, 10) for i in range(4))       # 100 MACs each
    head = (GemmLayer("h", 1, 10, 2),)                                      # 20 MACs
    m = EEModel("h", layers, (ExitHead(0, head), ExitHead(2, head)), (0.5, 0.25, 0.25))
    assert m.backbone_macs == 400 and m.exits[0].macs == 20
    assert [m.macs_to_exit(i) for i in range(3)] == [120, 340, 440]
    assert m.expected_macs() == pytest.approx(0.5 * 120 + 0.25 * 340 + 0.25 * 440)
    assert m.layer_index("l2") == 2
    with pytest.raises(KeyError):
        m.layer_index("nope")


@pytest.mark.parametrize("kwargs, match", [
    ({"relu": 1}, "relu"), ({"mult": 1.5}, "mult"), ({"mult": 1, "shift": -1}, "shift"),
    ({"shift": 2}, "without mult"), ({"groups": 3}, "groups"), ({"groups": 0}, "groups"),
])
def test_gemm_layer_optional_field_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GemmLayer("x", 1, 1, 4, **kwargs)


def test_docs_example_loads(tmp_path, repo_root):
    """The complete example in docs/models.md is a valid model file."""
    doc = (repo_root / "docs" / "models.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    zoo_dir = repo_root / "sim" / "workloads" / "zoo"
    write(tmp_path, "mynet.csv", (zoo_dir / "resnet18.csv").read_text())
    write(tmp_path, "mynet-branch.csv", "Layer, M, N, K,\nconv, 196, 64, 1152,\nfc, 1, 1000, 12544,\n")
    m = load_text(tmp_path, example, "mynet.toml")
    assert [m.layers[e.after].name for e in m.exits] == ["layer1.1.conv2", "layer2.1.conv2"]
    assert m.exits[0].layers[0].p == 64 and m.exits[1].layers[-1].c == 1000
    assert m.exits[1].layers[0].relu and not m.exits[1].layers[-1].relu
    conv1, fc = m.layers[0], m.layers[-1]
    assert (conv1.relu, conv1.mult, conv1.shift, fc.relu) == (True, 1234, 16, False)
    assert m.exit_probs == pytest.approx(geometric(3, 1.5)) and m.meta["extra"] == {"paper": "..."}
