"""Shared pytest fixtures, and the check that every test running an HDL simulator is
marked ``rtl``."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top directory (holds pyproject.toml, examples/, docs/)."""
    return Path(__file__).resolve().parents[1]


class UnmarkedRTL(BaseException):
    """A test without the ``rtl`` mark started an HDL simulator (a BaseException, so that no
    ``except Exception`` on the way turns it into an expected failure)."""


@pytest.fixture(autouse=True)
def _rtl_needs_its_mark(request, monkeypatch):
    """Outside ``@pytest.mark.rtl`` tests, starting Icarus or Verilator (cocotb's runner, the
    Verilator lint) fails the test, so that ``-m "not rtl"`` really leaves the HDL out."""
    if request.node.get_closest_marker("rtl") is not None:
        yield
        return
    calls = []

    def refuse(what):
        def stop(*a, **k):
            calls.append(what)
            raise UnmarkedRTL(f"{request.node.nodeid} runs {what}: mark it @pytest.mark.rtl")
        return stop
    try:
        import cocotb_tools.runner as cocotb_runner
    except ImportError:         # no cocotb: nothing can start a simulator
        cocotb_runner = None
    if cocotb_runner is not None:
        monkeypatch.setattr(cocotb_runner, "get_runner", refuse("an HDL simulator (cocotb)"))
    import fluidnpu.hw.lint as lint
    monkeypatch.setattr(lint, "lint_verilog", refuse("the Verilator lint"))
    yield
    # the test swallowed the exception (an ``except BaseException``): fail it here
    rep = getattr(request.node, "rep_call", None)
    if calls and (rep is None or rep.passed):
        pytest.fail(f"{request.node.nodeid} runs {calls[0]}: mark it @pytest.mark.rtl")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each test's call report on its item (for the teardown check above)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
