"""The rough edges of a newcomer's first day (issue 24), each on real processes: what was seen, and that it is gone."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LiveBalancer, ProcessGroup, scaled, wait_until

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
