"""The mutation check's list and runner (tools/mutants.py), without running any mutant's HDL:
every snippet is still in its file exactly once (so a change to a mutated file shows up
here, in ``make test``, not first in ``make mutants``), and the runner restores what it
mutates."""
from __future__ import annotations

import ast
import importlib.util
import json
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("fluidnpu_mutants", ROOT / "tools" / "mutants.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


mutants = _runner()
LIST = mutants.load()


@pytest.mark.parametrize("m", LIST, ids=[m.id for m in LIST])
def test_mutant_is_not_stale(m):
    """The snippet is in its file exactly once, the mutated file parses, and the tests named
    to kill it exist (file and test function)."""
    assert m.problem() is None, f"{m.id}: {m.problem()} (update tests/mutants/mutants.toml)"
    for node in m.tests:
        path, _, name = node.partition("::")
        if name:
            func = name.split("[")[0]
            tree = ast.parse((ROOT / path).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert func in names, f"{m.id}: {node}: no test {func} in {path}"


def test_the_list_covers_every_part():
    """At least two mutants in each hardware block, one in each of the model parts."""
    by_file = {}
    for m in LIST:
        by_file.setdefault(m.file, []).append(m.id)
    count = lambda *files: sum(len(by_file.get(f, [])) for f in files)  # noqa: E731
    assert count("hw/pe_array.py") >= 2 and count("hw/drain.py") >= 2
    assert count("hw/buffers.py") >= 2 and count("hw/loader.py") >= 2 and count("hw/loader_write.py") >= 2
    assert count("hw/fbe.py", "hw/exit_unit.py") >= 2
    # compare's statistics are sim/serving/stats.py's
    for f in ("sim/cycle_model.py", "sim/cycle_steps.py", "sim/cycle_engines.py", "sched/fluid.py", "sched/preemptive.py", "sim/serving/simulator.py",
              "sim/serving/stats.py"):
        assert count(f) >= 1, f


@pytest.mark.parametrize("text, message", [
    ("", "no [[mutant]] entries"),
    ("[[mutant]]\nid = 'a'\n", "must be exactly"),
    ("[[mutant]]\nid = 'a'\nfile = 'x'\noriginal = 'o'\nreplacement = 'r'\nwhy = 'w'\ntests = []\n",
     "non-empty list"),
    ("[[mutant]]\nid = 'a'\nfile = 'x'\noriginal = 'o'\nreplacement = 'r'\nwhy = 'w'\ntests = ['-k', 'x']\n",
     "not options"),
    ("[[mutant]]\nid = 'a'\nfile = 'x'\noriginal = 'o'\nreplacement = 'r'\nwhy = 'w'\ntests = ['t.py']\n" * 2,
     "used twice"),
])
def test_bad_lists_are_named(tmp_path, text, message):
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(mutants.ListError, match=message.replace("[", r"\[")):
        mutants.load(p)


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A small tree in place of the repository: a module and its test."""
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    (tmp_path / "test_m.py").write_text("import m\n\ndef test_f():\n    assert m.f() == 1\n")
    monkeypatch.setattr(mutants, "ROOT", tmp_path)
    monkeypatch.setattr(mutants, "STATE", tmp_path / "state")
    monkeypatch.setattr(mutants, "JOURNAL", tmp_path / "state" / "journal.json")
    return tmp_path


def _mutant(repl, orig="return 1"):
    return mutants.Mutant("x", "m.py", orig, repl, ("test_m.py::test_f",), "test")


def test_applied_mutant_is_restored_on_interrupt(fake_root):
    p = fake_root / "m.py"
    before, mtime = p.read_text(), p.stat().st_mtime_ns
    with pytest.raises(KeyboardInterrupt):
        with mutants._Applied(_mutant("return 2")):
            assert "return 2" in p.read_text() and mutants.JOURNAL.is_file()
            raise KeyboardInterrupt
    assert p.read_text() == before and p.stat().st_mtime_ns == mtime
    assert not mutants.JOURNAL.exists()


def test_journal_restores_after_a_kill(fake_root):
    """A run killed outright leaves the journal; the next run restores the file from it."""
    p = fake_root / "m.py"
    before, mtime = p.read_text(), p.stat().st_mtime_ns
    mutants._write_journal(_mutant("return 2"), before, mtime)
    p.write_text(_mutant("return 2").mutated(before))
    assert "m.py" in mutants.recover()
    assert p.read_text() == before and p.stat().st_mtime_ns == mtime and not mutants.JOURNAL.exists()
    assert mutants.recover() is None


def test_stale_mutants_do_not_run(fake_root, tmp_path):
    r = mutants.run_one(_mutant("return 3", orig="return 9"), 120, tmp_path / "build", sys.executable)
    assert r.status == "stale" and "occurs 0 times" in r.detail
    r = mutants.run_one(_mutant("return (", orig="return 1"), 120, tmp_path / "build", sys.executable)
    assert r.status == "stale" and "does not parse" in r.detail
    assert (fake_root / "m.py").read_text() == "def f():\n    return 1\n"


def test_runner_result_file(fake_root, tmp_path):
    """``main``: the baseline passes, one mutant killed, an equivalent one survives (exit
    status 1); the result JSON names each; the tree is as before, with no bytecode of a mutant."""
    lst = tmp_path / "list.toml"
    lst.write_text("[[mutant]]\nid = 'k'\nfile = 'm.py'\noriginal = 'return 1'\nreplacement = 'return 2'\n"
                   "why = 'w'\ntests = ['test_m.py::test_f']\n"
                   "[[mutant]]\nid = 's'\nfile = 'm.py'\noriginal = 'return 1'\nreplacement = 'return (1)'\n"
                   "why = 'w'\ntests = ['test_m.py']\n")
    out = tmp_path / "r.json"
    assert mutants.main(["--list", str(lst), "--json", str(out), "--timeout", "120"]) == 1
    res = json.loads(out.read_text())
    assert [(m["id"], m["status"]) for m in res["mutants"]] == [("k", "killed"), ("s", "survived")]
    assert res["counts"]["killed"] == 1 and res["counts"]["survived"] == 1
    assert res["mutants"][0]["failed"] == ["test_m.py::test_f"]
    assert (fake_root / "m.py").read_text() == "def f():\n    return 1\n"
    assert not list(fake_root.rglob("__pycache__")), "bytecode of a mutant left in the tree"
    assert mutants.main(["--list", str(lst), "--only", "nope"]) == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL      # the runner's handlers are undone
