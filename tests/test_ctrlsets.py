"""synth.ctrlsets: the flip-flops' control sets and the ECP5 logic tiles they need at least."""
import json

import pytest

from fluidnpu.synth.ctrlsets import describe_control_sets, ff_control_sets


def _ff(clk=2, lsr="0", ce="1"):
    return {"type": "TRELLIS_FF", "connections": {"CLK": [clk], "LSR": [lsr], "CE": [ce], "DI": [9], "Q": [10]}}


def _netlist(ffs, top="00000000000000000000000000000001"):
    cells = {f"ff{i}": c for i, c in enumerate(ffs)}
    cells["lut"] = {"type": "LUT4", "connections": {"Z": [3]}}
    return {"modules": {"top": {"attributes": {"top": top}, "cells": cells}}}


def test_one_group_packs_eight_to_a_tile():
    cs = ff_control_sets(_netlist([_ff() for _ in range(17)]))
    assert cs == {"ffs": 17, "lsr_nets": 0, "ce_nets": 0, "private_lsr_ffs": 0, "min_tiles": 3}


def test_each_lsr_net_takes_tiles_of_its_own():
    """Two single flip-flops on private LSR nets and ten on a shared one: 1 + 1 + 2 tiles,
    and 16 flip-flops without LSR two more (not 4 = ceil(28 / 8) as one group)."""
    ffs = [_ff(lsr=100), _ff(lsr=101)] + [_ff(lsr=102) for _ in range(10)] + [_ff() for _ in range(16)]
    cs = ff_control_sets(_netlist(ffs))
    assert cs["lsr_nets"] == 3 and cs["private_lsr_ffs"] == 2
    assert cs["min_tiles"] == 1 + 1 + 2 + 2


def test_ce_nets_fill_slices_of_their_own():
    """Within one LSR group the two flip-flops of a slice share CE: 3 + 1 + 1 flip-flops on
    three CE nets take 2 + 1 + 1 slices, one tile; five more such groups of CE make two."""
    ffs = [_ff(ce=50)] * 3 + [_ff(ce=51), _ff(ce=52)]
    assert ff_control_sets(_netlist(ffs))["min_tiles"] == 1
    ffs = [_ff(ce=60 + i) for i in range(5)]             # five slices
    cs = ff_control_sets(_netlist(ffs))
    assert cs["min_tiles"] == 2 and cs["ce_nets"] == 5


def test_clock_nets_split_groups():
    cs = ff_control_sets(_netlist([_ff(clk=2), _ff(clk=4)]))
    assert cs["min_tiles"] == 2


def test_reads_a_file_and_needs_one_top(tmp_path):
    p = tmp_path / "top.json"
    p.write_text(json.dumps(_netlist([_ff()] * 9)))
    assert ff_control_sets(p)["min_tiles"] == 2
    two = _netlist([_ff()])
    two["modules"]["other"] = two["modules"]["top"]
    with pytest.raises(ValueError, match="2 top modules"):
        ff_control_sets(two)
    # one module is the top whatever its attributes; of two, one must say so
    assert ff_control_sets(_netlist([_ff()], top="0"))["ffs"] == 1
    two["modules"]["top"]["attributes"] = two["modules"]["other"]["attributes"] = {}
    with pytest.raises(ValueError, match="0 top modules among 2"):
        ff_control_sets(two)


@pytest.mark.parametrize("min_tiles, warned", [(9409, False), (9410, True)])
def test_the_line_warns_above_nine_tenths_of_the_tiles(min_tiles, warned):
    cs = {"ffs": 1, "lsr_nets": 2, "ce_nets": 3, "private_lsr_ffs": 0, "min_tiles": min_tiles, "tiles": 10455}
    line = describe_control_sets(cs)
    assert line.startswith(f"1 flip-flops on 2 LSR and 3 CE nets need at least {min_tiles} of 10455")
    assert ("placement may not legalise" in line) is warned
