"""tools/wirelength.py: the half-perimeter wirelength of a placed design by unit and family,
on a hand-made placement whose figures are known."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("fluidnpu_wirelength", ROOT / "tools" / "wirelength.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(bel, **conns):
    attrs = {"NEXTPNR_BEL": bel} if bel else {}
    return {"type": "TRELLIS_FF", "attributes": attrs, "connections": conns}


#: a.core.x[0] (bit 2): tiles (1, 1), (4, 3), (2, 7): HPWL 3 + 6 = 9, two sinks;
#: a.core.x[1] (bit 3): (1, 1), (1, 2): 1; a.core.bufs.w3_data5 (bit 4): (4, 3), (6, 3): 2;
#: bit 5 reaches one placed cell and an unplaced one: not counted
DESIGN = {"modules": {"top": {
    "attributes": {"top": "00000000000000000000000000000001"},
    "cells": {
        "d": _cell("X1/Y1/SLICEA", Q=[2, 3]),
        "s1": _cell("X4/Y3/SLICEB", D=[2], Q=[4]),
        "s2": _cell("X2/Y7/SLICEC", D=[2]),
        "s3": _cell("X1/Y2/SLICEA", D=[3], Q=[5]),
        "s4": _cell("X6/Y3/DP16KD", DI=[4]),
        "u": _cell(None, D=[5]),
    },
    "netnames": {
        "a.core.x": {"bits": [2, 3]},
        "a.core.x_alias": {"bits": [2]},            # a bit counts once
        "a.core.bufs.w3_data5": {"bits": [4]},
        "a.core.lone": {"bits": [5]},
    }}}}


def test_hpwl_by_family_and_unit():
    wl = _tool().wirelength
    assert wl(DESIGN) == {"a.core.x": {"hpwl": 10, "nets": 2, "sinks": 3},
                          "a.core.bufs.w#_data#": {"hpwl": 2, "nets": 1, "sinks": 1}}
    assert wl(DESIGN, by="unit") == {"a.core": {"hpwl": 10, "nets": 2, "sinks": 3},
                                     "a.core.bufs": {"hpwl": 2, "nets": 1, "sinks": 1}}


def test_refuses_an_unplaced_design_and_a_bad_grouping(tmp_path, capsys):
    tool = _tool()
    unplaced = json.loads(json.dumps(DESIGN))
    for c in unplaced["modules"]["top"]["cells"].values():
        c["attributes"].pop("NEXTPNR_BEL", None)
    with pytest.raises(ValueError, match="no placed cells"):
        tool.wirelength(unplaced)
    with pytest.raises(ValueError, match="by = 'net'"):
        tool.wirelength(DESIGN, by="net")
    p = tmp_path / "placed.json"
    p.write_text(json.dumps(unplaced))
    assert tool.main([str(p)]) == 2
    assert "no placed cells" in capsys.readouterr().err
    p.write_text(json.dumps(DESIGN))
    assert tool.main([str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["a.core.x"]["hpwl"] == 10
    assert tool.main([str(p), "--by", "unit", "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "total HPWL 12 tiles, 3 net bits" and len(out) == 2 and out[1].endswith(" a.core")
