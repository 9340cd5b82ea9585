"""The rough edges of a newcomer's first day (issue 24), each on real processes: what was seen, and that it is gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Endpoints, LiveBalancer, ProcessGroup, scaled, start_balancer, timeout_arg, wait_until
from wire import security

# The installed `zlb` script, not `python -m zlb`: `-m` puts the working directory on sys.path by itself.
ZLB_SCRIPT = str(Path(sys.executable).with_name("zlb"))


def children_of(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text(encoding="ascii").rsplit(") ", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has stopped running: it only waits to be reaped by PID 1)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """PIDs a test saw started by one of its processes; whichever outlives the test is killed by PID."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_cluster_killed_with_sigkill_takes_its_children_with_it(procs: ProcessGroup, strays: list[int]):
    """`kill -9` of `zlb cluster`: its balancer, nodes and clients are gone within 5 s (before: re-parented, alive)."""
    cluster = procs.start("cluster", "cluster", "--stay", "--requests-per-client", "50", "--heartbeat-ms", "200")
    # Three nodes and two clients appear after the balancer answers; wait until all six run.
    six = wait_until(lambda: len(children_of(cluster.pid)) == 6 and children_of(cluster.pid), 30, "six children")
    strays.extend(six)
    procs.kill9(cluster)
    killed_at = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in strays), 5, "every child of the killed cluster to end")
    assert time.monotonic() - killed_at < scaled(5)


WORK_MODULE = """
import json

from server_node.handlers import Work


def handle(work: Work) -> dict:
    return {"sum": sum(json.loads(work.payload)["payload"]["numbers"])}
"""


@pytest.mark.timeout(60)
def test_handler_module_is_found_in_the_working_directory(balancer: LiveBalancer, procs: ProcessGroup):
    """The README's `zlb server --handler mypkg.work:handle`, run by the installed script beside mypkg/, serves."""
    package = procs.workdir / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "work.py").write_text(WORK_MODULE, encoding="utf-8")
    args = ["server", "--id", "5", "--handler", "mypkg.work:handle", "--heartbeat-ms", "100", "--liveness", "50"]
    procs.start("mypkg-server", *args, extra_env={"PYTHONPATH": ""}, command=[ZLB_SCRIPT])
    balancer.wait_servers_active({5})
    payload = json.dumps({"numbers": [1, 2, 3]})
    sent = procs.run("send", "--client-id", "0", "--request-id", "1", "--payload", payload, "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["result"] == {"sum": 6}


@pytest.mark.timeout(60)
def test_a_curve_mismatch_names_itself_on_both_sides(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`zlb send` without keys (or with a key not allowed) against a curve balancer exits non-zero within 10 s
    naming curve keys; the balancer says on stderr that it refused a keyless peer (before: silence on both)."""
    for name in ("balancer", "client", "stranger"):
        security.generate_keys(str(tmp_path / "keys"), name)
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(tmp_path / "keys" / "client.key", allow)
    monkeypatch.setenv("ZLB_CURVE_SECRET", str(tmp_path / "keys" / "client.key_secret"))  # the test's own calls
    monkeypatch.setenv("ZLB_SERVER_KEY", str(tmp_path / "keys" / "balancer.key"))
    balancer = start_balancer(
        procs, endpoints, 100, "--curve-secret", str(tmp_path / "keys" / "balancer.key_secret"), "--allow", str(allow)
    )
    no_keys = {"ZLB_CURVE_SECRET": "", "ZLB_SERVER_KEY": ""}
    stranger = {
        "ZLB_CURVE_SECRET": str(tmp_path / "keys" / "stranger.key_secret"),
        "ZLB_SERVER_KEY": str(tmp_path / "keys" / "balancer.key"),
    }
    started = time.monotonic()
    keyless = procs.start("keyless", "send", "--client-id", "0", "--request-id", "1", extra_env=no_keys)
    unknown = procs.start("stranger", "send", "--client-id", "1", "--request-id", "1", extra_env=stranger)
    assert keyless.wait(15) != 0
    assert time.monotonic() - started < scaled(10)
    assert "requires curve keys and this process has none: set --curve-secret and --server-key" in keyless.stderr()
    assert unknown.wait(15) != 0
    assert "refused this process's curve key: its public key must be in the balancer's --allow" in unknown.stderr()
    # Whichever side reads the other's greeting first hangs up, so the balancer sees one of two events.
    told = ("refused a peer on the frontend: it connected without curve keys", "a peer without curve keys")
    wait_until(lambda: any(line in balancer.proc.stderr() for line in told), 5, "the balancer's stderr line")


@pytest.mark.timeout(60)
def test_send_with_every_node_drained_says_so_and_gives_up_at_its_timeout(balancer: LiveBalancer, procs: ProcessGroup):
    """`zlb send` while every node is drained says so on stderr within 5 s, naming the drain, and exits 1 at
    its --timeout (before: silence, for ever)."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    balancer.call("drain", server_id=0)
    started = time.monotonic()
    timeout = timeout_arg(5)
    sent = procs.start("send", "send", "--client-id", "0", "--request-id", "1", "--timeout", timeout)
    said = "no live server can take the 1 waiting request(s): every server is draining (servers 0)"
    wait_until(lambda: said in sent.stderr(), 5, "the stall notice")
    assert time.monotonic() - started < scaled(5)
    assert sent.wait(15) == 1
    assert f"timed out after {timeout} s; 1 unanswered: 1" in sent.stderr()
    assert sent.stderr().count("no live server") == 1, "said once while the reason stays the same"


@pytest.mark.timeout(60)
def test_cluster_on_ports_another_balancer_holds_ends_with_one_error_and_none_of_its_lines(
    balancer: LiveBalancer, procs: ProcessGroup
):
    """`zlb cluster` on the ports of a balancer left running: its balancer's bind error, once, and nothing of the
    other's (before: "System configured with 3 servers and 2 clients." from the old one, then the error twice)."""
    done = procs.run("cluster", "--cost-ms", "0", timeout=40)
    assert done.returncode != 0
    assert "System configured" not in done.stdout and "Request" not in done.stdout, done.stdout
    errors = [line for line in done.stderr.splitlines() if "Address already in use" in line]
    assert len(errors) == 1, done.stderr
    assert balancer.call("status")["requests"]["submitted"] == 0, "the other balancer was left alone"
