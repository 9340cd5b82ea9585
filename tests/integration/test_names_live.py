"""A client id is a name (issue 22): several processes send under one at once, on real processes.

Each result goes back to the connection that submitted it, also for two connections of one client id,
for replays and for re-sends after a balancer restart on its journal; `zlb client` without
--first-request-id sends new request ids on every run.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.harness import Endpoints, LiveBalancer, Proc, ProcessGroup, scaled, start_balancer, timeout_arg, wait_until
from tests.reliability.handlers import executions
from wire import protocol as p
from wire.protocol import MsgType

# Runs `zlb ARGS` once the test opens the FIFO named first: the processes of a round load everything, say
# "ready", then wait there together, so they start their command at the same moment.
AT_ONCE = """
import sys
from zlb.cli import main
print("ready", flush=True)
with open(sys.argv[1], "rb") as barrier:
    barrier.read()
sys.argv = ["zlb", *sys.argv[2:]]
main()
"""


def start_together(procs: ProcessGroup, tmp_path: Path, name: str, *commands: tuple[str, ...]) -> list[Proc]:
    """Start a `zlb` process per command and release them at once, when every one is loaded and waiting."""
    barrier = tmp_path / f"{name}.barrier"
    os.mkfifo(barrier)
    started = [
        procs.start(f"{name}-{n}", str(barrier), *args, command=[sys.executable, "-c", AT_ONCE])
        for n, args in enumerate(commands)
    ]
    wait_until(lambda: all(proc.stdout().startswith("ready") for proc in started), 30, f"{name}: all loaded")
    with open(barrier, "wb"):  # opening the write end lets every reader's open return; closing it, their read
        pass
    return started


def rows(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout().splitlines() if line.startswith("{")]


def start_node(balancer: LiveBalancer, node_id: int, handler: str, exec_log: Path, gate: Path | None = None) -> Proc:
    env = {"ZLB_TEST_EXEC_LOG": str(exec_log)}
    if gate is not None:
        env["ZLB_TEST_GATE"] = str(gate)
    return balancer.start_server(node_id, "--capacity", "8", handler=handler, env=env)


def known(balancer: LiveBalancer, client_id: int, *request_ids: int) -> bool:
    """Whether the balancer holds every one of these requests."""
    listed = {row["request_id"] for row in balancer.call("requests", client=client_id, limit=0)}
    return set(request_ids) <= listed


@pytest.mark.timeout(150)
def test_two_zlb_send_under_one_client_id_at_once_both_get_their_results(
    balancer: LiveBalancer, procs: ProcessGroup, tmp_path: Path
):
    """Two `zlb send --client-id 9`, different request ids, started at the same moment, three rounds: both
    exit 0 with their own result every time (before issue 22 the second exited 2, "client id 9 is in use").
    The node holds the work until both requests are in the balancer, so the two processes overlap."""
    gate, exec_log = tmp_path / "gate", tmp_path / "exec.log"
    start_node(balancer, 0, "gated_counting", exec_log, gate)
    balancer.wait_servers_active({0})
    for round_ in range(3):
        ids = (901 + 2 * round_, 902 + 2 * round_)
        base = ("send", "--client-id", "9", "--json", "--timeout", timeout_arg(40))
        commands = [(*base, "--request-id", str(rid), "--payload", str(rid)) for rid in ids]
        sends = start_together(procs, tmp_path, f"send-round-{round_}", *commands)
        wait_until(lambda ids=ids: known(balancer, 9, *ids), 30, f"both requests of round {round_} in the balancer")
        assert all(send.popen.poll() is None for send in sends)  # both still waiting: they overlap
        gate.touch()
        for send, rid in zip(sends, ids):
            assert send.wait(40) == 0, send.stderr()
            (row,) = rows(send)
            assert (row["client_id"], row["request_id"], row["status"]) == (9, rid, "processed")
            assert row["result"]["payload"] == rid
            assert not row["replay"] and "in use" not in send.stderr()
        gate.unlink()
    assert executions(str(exec_log)) == {(9, rid): 1 for rid in range(901, 907)}
    assert balancer.call("status")["requests"]["clients_refused"] == 0


class Connection:
    """A raw client DEALER under client id 9, re-sending what is unanswered every second as a Client does,
    and keeping every answer it receives, so an answer meant for another connection would show."""

    def __init__(self, frontend: str, name: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"{name}-{secrets.token_hex(4)}".encode())
        self.sock.connect(frontend)
        self.incarnation = secrets.randbits(64)
        self.sock.send(p.encode(MsgType.CLIENT_HELLO, 9, self.incarnation, os.getpid(), "test"))
        self.answers: list[tuple[int, str, bool, bytes]] = []  # (request id, status, replay, body)
        self.unanswered: set[int] = set()

    def submit(self, *request_ids: int) -> None:
        self.unanswered |= set(request_ids)
        items = [[rid, 5, b'{"cost_ms": 0, "payload": %d}' % rid] for rid in request_ids]
        self.sock.send(p.encode(MsgType.SUBMIT_BATCH, 9, self.incarnation, items))

    def answered(self, *request_ids: int) -> dict[int, tuple[str, bool, bytes]]:
        """Wait for the answers to these ids (re-sending), and return the last of each."""
        deadline, resend_at = time.monotonic() + scaled(30), time.monotonic() + 1.0
        while self.unanswered & set(request_ids):
            assert time.monotonic() < deadline, f"no answer for {sorted(self.unanswered & set(request_ids))}"
            if time.monotonic() >= resend_at:
                self.submit(*sorted(self.unanswered & set(request_ids)))
                resend_at = time.monotonic() + 1.0
            self._receive(100)
        return {rid: (status, replay, body) for rid, status, replay, body in self.answers if rid in request_ids}

    def settle(self) -> None:
        """A round trip on this connection: whatever the balancer sent it before is in `answers` after."""
        self.sock.send(p.encode(MsgType.CLIENT_PING, 9, self.incarnation, 0))
        deadline = time.monotonic() + scaled(10)
        while self._receive(100) is not MsgType.CLIENT_WELCOME:
            assert time.monotonic() < deadline, "no CLIENT_WELCOME"

    def _receive(self, timeout_ms: int) -> MsgType | None:
        if not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart()
        msg_type, fields = p.decode(frames[0])
        body = p.split_body(msg_type, frames)
        if msg_type is MsgType.RESULT_BATCH:
            items = [(rid, status, replay, bytes(result)) for rid, status, _s, _a, replay, result in fields[0]]
        elif msg_type is MsgType.RESULT:
            items = [(fields[0], fields[1], fields[4], bytes(body))]
        else:
            # CREDIT too: a connection that said CLIENT_HELLO hears of its window when it moves.
            assert msg_type in (MsgType.CLIENT_WELCOME, MsgType.REJECTED, MsgType.CREDIT), (msg_type, fields)
            return msg_type
        self.answers += items
        self.unanswered -= {item[0] for item in items}
        return msg_type

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.mark.timeout(120)
def test_two_connections_of_one_client_id_get_their_own_results_replays_and_re_sends_after_a_restart(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """Connections A and B under client id 9. Live: A sends 1 and 2, B sends 3, 4 and A's 1. With nothing to
    run them: A sends 5 and 6, B sends 7, 8 and A's 5; then kill -9 of the balancer, a restart on its journal,
    a node, and each re-sends what is unanswered. Then B asks for A's finished 2: a replay. Every connection
    got exactly the answers for the ids it sent, the shared ones the same body, and each request ran once."""
    journal, exec_log = str(tmp_path / "zlb.journal"), tmp_path / "exec.log"
    balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
    node = start_node(balancer, 0, "counting", exec_log)
    balancer.wait_servers_active({0})
    a, b = Connection(endpoints.frontend, "conn-a"), Connection(endpoints.frontend, "conn-b")
    try:
        a.submit(1, 2)
        b.submit(3, 4, 1)
        live_a, live_b = a.answered(1, 2), b.answered(3, 4, 1)
        assert live_a[1][2] == live_b[1][2] and json.loads(live_a[1][2])["echo"] == 1
        procs.kill9(node)  # what comes next waits for a node
        a.submit(5, 6)
        wait_until(lambda: known(balancer, 9, 5, 6), 10, "A's 5 and 6 waiting")
        duplicates = balancer.call("status")["requests"]["duplicates"]
        b.submit(7, 8, 5)
        wait_until(lambda: balancer.call("status")["requests"]["duplicates"] > duplicates, 10, "B's copy of 5")
        procs.kill9(balancer.proc)
        balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
        assert balancer.call("status")["counters"]["journal_restored_pending"] == 4
        start_node(balancer, 1, "counting", exec_log)
        after_a, after_b = a.answered(5, 6), b.answered(7, 8, 5)
        assert after_a[5][2] == after_b[5][2] and json.loads(after_a[5][2]) == {"server_id": 1, "echo": 5}
        b.submit(2)  # A's, finished before the restart
        replayed = b.answered(2)
        assert replayed[2] == ("processed", True, live_a[2][2])
        for conn in (a, b):
            conn.settle()
        assert {rid for rid, *_ in a.answers} == {1, 2, 5, 6}
        assert {rid for rid, *_ in b.answers} == {1, 2, 3, 4, 5, 7, 8}
        assert all(status == "processed" for _rid, status, _r, _b in a.answers + b.answers)
    finally:
        a.close()
        b.close()
    assert executions(str(exec_log)) == {(9, rid): 1 for rid in range(1, 9)}


def client_run(procs: ProcessGroup, *extra: str, replay: bool = False) -> list[int]:
    """`zlb client --id 5 --requests 5`; the request ids it sent, each processed (each a replay, or none)."""
    done = procs.run("client", "--id", "5", "--requests", "5", "--json", "--timeout", timeout_arg(30), *extra)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(r["status"], r["replay"]) for r in results} == {("processed", replay)}
    return sorted(r["request_id"] for r in results)


@pytest.mark.timeout(120)
def test_every_run_of_zlb_client_sends_new_request_ids_also_after_a_restart(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """Two runs of `zlb client --id 5 --requests 5` run 10 requests; after kill -9 and a restart on the
    journal the next run goes on from there, and so does one after ids were handed out and never used."""
    journal, exec_log = str(tmp_path / "zlb.journal"), tmp_path / "exec.log"
    balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
    start_node(balancer, 0, "counting", exec_log)
    balancer.wait_servers_active({0})
    assert client_run(procs) == [1, 2, 3, 4, 5]
    assert client_run(procs) == [6, 7, 8, 9, 10]
    assert len(executions(str(exec_log))) == 10 and set(executions(str(exec_log)).values()) == {1}
    procs.kill9(balancer.proc)
    balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
    assert client_run(procs) == [11, 12, 13, 14, 15]
    reserved = balancer.call("next_request_id", client_id=5, count=5)  # a run that died before it sent
    assert reserved["first_request_id"] == 16
    procs.kill9(balancer.proc)
    balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
    assert client_run(procs) == [21, 22, 23, 24, 25]
    assert client_run(procs, "--first-request-id", "1", replay=True) == [1, 2, 3, 4, 5]  # the stored results
    assert executions(str(exec_log)) == {(5, rid): 1 for rid in [*range(1, 16), *range(21, 26)]}


@pytest.mark.timeout(120)
def test_two_runs_of_zlb_client_started_at_once_run_all_their_requests(
    balancer: LiveBalancer, procs: ProcessGroup, tmp_path: Path
):
    """Two `zlb client --id 5 --requests 5` started at the same moment: 10 requests run, once each, and each
    run prints its own 5 results."""
    gate, exec_log = tmp_path / "gate", tmp_path / "exec.log"
    start_node(balancer, 0, "gated_counting", exec_log, gate)
    balancer.wait_servers_active({0})
    command = ("client", "--id", "5", "--requests", "5", "--json", "--timeout", timeout_arg(40))
    runs = start_together(procs, tmp_path, "client", command, command)
    wait_until(lambda: balancer.call("status")["requests"]["submitted"] == 10, 30, "both runs' requests in")
    gate.touch()
    sent = []
    for run in runs:
        assert run.wait(40) == 0, run.stderr()
        ids = sorted(row["request_id"] for row in rows(run) if row["status"] == "processed")
        assert len(ids) == 5 and ids == list(range(ids[0], ids[0] + 5))
        sent += ids
    assert sorted(sent) == list(range(1, 11))
    assert executions(str(exec_log)) == {(5, rid): 1 for rid in range(1, 11)}
