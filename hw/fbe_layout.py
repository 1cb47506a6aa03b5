"""Layouts and codes of the Fluid Batching Engine's ports (see docs/fbe.md).

The FBE runs a *network program*: a list of entries in its descriptor memory, one per
GEMM layer in execution order (backbone layers with their exit heads' layers inserted
after the backbone layer they read).
"""
from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .config import HwConfig
from .interface import SHIFT_WIDTH, log2

__all__ = ["SRC_INPUT", "SRC_BACKBONE", "SRC_PREV", "CRIT_MARGIN", "CRIT_MAX",
           "EV_LAYER_START", "EV_LAYER_DONE", "EV_EXIT", "EV_ACCEPT", "EV_REFUSE", "EV_MERGE",
           "EV_RESUME", "EV_IDLE", "EVENT_NAMES", "REFUSE_ZERO", "REFUSE_SAMPLES", "REFUSE_SLOTS",
           "REFUSE_NAMES", "MODE_IDLE", "MODE_MAIN", "MODE_CATCHUP", "MODE_NAMES",
           "entry_layout", "prog_write_layout", "table_write_layout", "admit_layout", "result_layout",
           "event_layout", "status_layout", "policy_word", "slot_width", "pack", "unpack"]

#: Where an entry's X rows come from.
SRC_INPUT = 0       #: the sample's input (its admitted address)
SRC_BACKBONE = 1    #: the last backbone entry's output for that sample
SRC_PREV = 2        #: the previous entry's output (a head's second and later layers)

CRIT_MARGIN = 0     #: exit when top1 - top2 >= threshold
CRIT_MAX = 1        #: exit when top1 >= threshold

EV_LAYER_START, EV_LAYER_DONE, EV_EXIT, EV_ACCEPT, EV_REFUSE, EV_MERGE, EV_RESUME, EV_IDLE = range(8)
EVENT_NAMES = ("layer_start", "layer_done", "exit", "accept", "refuse", "merge", "resume", "idle")

REFUSE_ZERO = 1      #: B_incr = 0
REFUSE_SAMPLES = 2   #: fewer admitted samples waiting than B_incr
REFUSE_SLOTS = 3     #: fewer free slots than B_incr
REFUSE_NAMES = {REFUSE_ZERO: "zero", REFUSE_SAMPLES: "samples", REFUSE_SLOTS: "slots"}

MODE_IDLE, MODE_MAIN, MODE_CATCHUP = range(3)
MODE_NAMES = ("idle", "main", "catchup")


def slot_width(cfg: HwConfig) -> int:
    return max(1, (cfg.b_max - 1).bit_length())


def _count(cfg: HwConfig):
    return unsigned((cfg.b_max).bit_length())


def _lid_width(cfg: HwConfig) -> int:
    return max(1, log2(cfg.net_entries))


def entry_layout(cfg: HwConfig) -> data.StructLayout:
    """One program entry: a GEMM per sample, where its rows come from, where its output
    goes in each batch context, and the exit test that follows it (if any)."""
    dim, aw = cfg.dim_width, cfg.addr_width
    return data.StructLayout({
        "r": unsigned(dim), "p": unsigned(dim), "c": unsigned(dim),
        "w_addr": unsigned(aw), "b_addr": unsigned(aw),
        "out0": unsigned(aw),          # output region, main batch context
        "out1": unsigned(aw),          # output region, catch-up context
        "blk": unsigned(aw),           # bytes of one sample's output (r * output row stride)
        "bias_en": unsigned(1), "out_mode": unsigned(1), "relu": unsigned(1),
        "mult": signed(cfg.mult_width), "shift": unsigned(SHIFT_WIDTH),
        "src": unsigned(2),
        "backbone": unsigned(1),       # its output is what SRC_BACKBONE entries read next
        "lid": unsigned(_lid_width(cfg)),   # column of the control table
        "exit": unsigned(1),           # an exit test follows (logits: r = 1, raw output)
        "final": unsigned(1),          # the exit takes every sample (the network's end)
        "crit": unsigned(1),
        "exit_id": unsigned(4),
        "thr": signed(32),
    })


def prog_write_layout(cfg: HwConfig) -> data.StructLayout:
    return data.StructLayout({"idx": unsigned(log2(cfg.net_entries)), "entry": entry_layout(cfg)})


def table_write_layout(cfg: HwConfig) -> data.StructLayout:
    """Control table write: the policy word for (batch size ``b``, table column ``lid``)."""
    return data.StructLayout({"b": unsigned((cfg.b_max).bit_length()),
                              "lid": unsigned(_lid_width(cfg)), "word": unsigned(16)})


def policy_word(br: int, bp: int, k: int) -> int:
    """The control table word (same as the mapper's image): bits 7:0 B_R (0: the whole
    batch), 11:8 log2 B_P, 15:12 log2 k."""
    return br | (bp.bit_length() - 1) << 8 | (k.bit_length() - 1) << 12


def admit_layout(cfg: HwConfig) -> data.StructLayout:
    return data.StructLayout({"tag": unsigned(cfg.tag_width), "x_addr": unsigned(cfg.addr_width)})


def result_layout(cfg: HwConfig) -> data.StructLayout:
    return data.StructLayout({
        "tag": unsigned(cfg.tag_width),
        "slot": unsigned(slot_width(cfg)),
        "exit_id": unsigned(4),
        "cls": unsigned(max(1, (cfg.max_classes - 1).bit_length())),
        "top1": signed(32), "top2": signed(32),
        "cycle": unsigned(32),
    })


def event_layout(cfg: HwConfig) -> data.StructLayout:
    return data.StructLayout({
        "kind": unsigned(3),
        "layer": unsigned(log2(cfg.net_entries)),
        "ctx": unsigned(1),
        "count": _count(cfg),          # B of the layer / B_exit / B_incr / merged B
        "info": unsigned(4),           # exit id, or refusal reason
        "mask": unsigned(cfg.b_max),   # slots that exited
        "cycle": unsigned(32),
    })


def status_layout(cfg: HwConfig) -> data.StructLayout:
    return data.StructLayout({
        "mode": unsigned(2),
        "layer": unsigned(log2(cfg.net_entries)),
        "b_act": _count(cfg),
        "b_old": _count(cfg),
        "l_old": unsigned(log2(cfg.net_entries)),
        "free": _count(cfg),
        "staged": _count(cfg),
        "hold": unsigned(1),           # a merge's catch-up data is still live: no new catch-up
        "decide": unsigned(1),         # waiting for the scheduler (idle, or a boundary in step mode)
    })


def pack(layout: data.Layout, fields: dict) -> int:
    """A layout's fields (nested dicts for nested structs) as the integer on the wire."""
    return int(layout.const(fields).as_bits())


def unpack(layout: data.StructLayout, value: int) -> dict:
    """The inverse of :func:`pack` for flat struct layouts (signed fields sign-extended)."""
    out = {}
    for name, f in layout:
        w = f.width
        v = (int(value) >> f.offset) & ((1 << w) - 1)
        if f.shape.signed and v >> (w - 1):
            v -= 1 << w
        out[name] = v
    return out
