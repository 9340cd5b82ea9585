"""What a server node accepts from whatever answers on the balancer's address."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server_node.node import _alive, _sane_welcome
from tests.harness import scaled


@pytest.mark.parametrize(
    ("heartbeat_ms", "liveness", "sane"),
    [(500, 3, True), (1, 1, True), (0, 3, False), (-500, 3, False), (2**40, 3, False), (500, 0, False)],
)
def test_a_welcome_with_timing_no_balancer_sends_is_not_followed(heartbeat_ms: int, liveness: int, sane: bool):
    """0 ms made the node say HELLO in a busy loop, 2**40 overflowed its poll, -500 divided into infinity."""
    assert _sane_welcome(0, heartbeat_ms, liveness, 1024) is sane


@pytest.mark.parametrize("pid", [2**31, 2**63, -1, 0])
def test_a_pid_no_process_can_have_is_not_alive(pid: int):
    """A REFUSED naming such a holder pid crashed the node in os.kill (OverflowError)."""
    assert _alive(pid) is False


def test_a_process_is_alive_until_it_has_ended():
    """The holder check a REFUSED node makes: a running process is alive; the same pid, ended and reaped, is not."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert _alive(child.pid) is True
    finally:
        child.stdin.close()  # the child reads to EOF and exits
        child.wait(scaled(10))
    assert _alive(child.pid) is False


def test_a_handler_module_that_does_not_parse_is_one_line(tmp_path, monkeypatch):
    """A syntax error in the user's module is a HandlerError naming the file and line, not a traceback."""
    import pytest

    from server_node import handlers

    (tmp_path / "badsyntax_mod.py").write_text("def handle(work:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(handlers.HandlerError, match=r"cannot import 'badsyntax_mod': .*badsyntax_mod.py, line 1"):
        handlers.load("badsyntax_mod:handle")
