"""/configure's request-id blocks: each client its own block, continued across gateway restarts."""

from __future__ import annotations

import signal
import threading

import pytest

from http_gateway import processes as processes_module
from http_gateway.processes import MAX_REQUESTS_PER_CLIENT, REQUEST_ID_BLOCK, NodeSettings, Processes
from http_gateway.validation import HttpError
from process_supervisor.supervisor import Supervisor
from tests.harness import LiveBalancer, ProcessGroup, wait_until
from tests.test_http_gateway import start_gateway


def processes_knowing(known: set[tuple[int, int]]) -> tuple[Processes, list[tuple[int, int]]]:
    asked: list[tuple[int, int]] = []

    def lookup(client_id: int, request_id: int) -> bool:
        asked.append((client_id, request_id))
        return (client_id, request_id) in known

    return Processes(Supervisor(), NodeSettings(), lambda: [], lambda *_batch: None, lookup), asked


@pytest.mark.parametrize("used", [0, 1, 2, 37, 1000, MAX_REQUESTS_PER_CLIENT])
def test_used_ids_of_a_block_are_found_by_binary_search(used: int):
    """The end of the prefix of ids the balancer knows is found in about 17 lookups, whatever its length."""
    start = 2 * REQUEST_ID_BLOCK + 1
    processes, asked = processes_knowing({(1, start + i) for i in range(used)})
    assert processes._used_before(1) == used
    assert len(asked) <= 18
    assert processes._used_before(0) == 0  # another client's block is its own


def configure_in_thread(processes: Processes, announce) -> tuple[threading.Thread, list[BaseException]]:
    """Run an empty /configure on a thread, as a web worker would; its error, if any, lands in the list."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            processes.configure(0, 0, 0, announce)
        except HttpError as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failed


def test_a_configure_queued_too_long_behind_another_is_withdrawn_with_409(monkeypatch):
    """/configure calls run one at a time; one that cannot start within the wait never runs and answers 409."""
    monkeypatch.setattr(processes_module, "CONFIGURE_WAIT_S", 0.2)
    processes, _ = processes_knowing(set())
    running, release, announced = threading.Event(), threading.Event(), []
    first, _ = configure_in_thread(processes, lambda: (running.set(), release.wait(10)))
    assert running.wait(5)
    with pytest.raises(HttpError) as refused:
        processes.configure(0, 0, 0, lambda: announced.append("withdrawn"))
    assert refused.value.status == 409
    release.set()
    first.join(5)
    processes.configure(0, 0, 0, lambda: announced.append("next"))
    assert announced == ["next"]  # the withdrawn one never ran


def test_a_configure_that_starts_within_the_wait_runs_to_the_end_however_long(monkeypatch):
    monkeypatch.setattr(processes_module, "CONFIGURE_WAIT_S", 1.0)
    processes, _ = processes_knowing(set())
    first_running, second_ran, never = threading.Event(), threading.Event(), threading.Event()
    first, _ = configure_in_thread(processes, lambda: (first_running.set(), never.wait(0.1)))
    assert first_running.wait(5)
    second, failed = configure_in_thread(processes, lambda: (second_ran.set(), never.wait(1.5)))
    first.join(5)
    second.join(5)
    assert second_ran.is_set() and failed == []


def test_closing_answers_queued_configures_503_and_stops_on_the_owner_thread(monkeypatch):
    processes, _ = processes_knowing(set())
    running, release = threading.Event(), threading.Event()
    stopped_by: list[str] = []
    monkeypatch.setattr(processes.sup, "stop_all", lambda timeout_s: stopped_by.append(threading.current_thread().name))
    first, first_failed = configure_in_thread(processes, lambda: (running.set(), release.wait(0.3)))
    assert running.wait(5)
    queued, queued_failed = configure_in_thread(processes, lambda: None)
    wait_until(lambda: processes._jobs.qsize() == 1, 5, "the second /configure to be queued")
    processes.close(timeout_s=1.0)
    first.join(5)
    queued.join(5)
    assert first_failed == []
    assert [exc.status for exc in queued_failed] == [503]  # type: ignore[attr-defined]
    assert stopped_by == ["zlb-http-processes"]


@pytest.mark.timeout(60)
def test_a_restarted_gateway_continues_each_clients_block(balancer: LiveBalancer, procs: ProcessGroup):
    """After a gateway restart in front of the same balancer, /configure's clients send new ids, not replays."""
    spec = {"num_servers": 1, "num_clients": 1, "requests_per_client": 2}
    first = start_gateway(procs, "--cost-ms", "10")
    assert first.call("POST", "/configure", spec).status == 200
    wait_until(lambda: len(first.get("/requests?status=processed")) == 2, 15, "the first two requests")
    first.proc.popen.send_signal(signal.SIGTERM)
    assert first.proc.wait(15) == 0
    second = start_gateway(procs, "--cost-ms", "10")
    assert second.call("POST", "/configure", spec).status == 200
    wait_until(lambda: len(second.get("/requests?status=processed")) == 4, 15, "two more requests")
    assert [r["request_id"] for r in second.get("/requests")] == [100001, 100002, 100003, 100004]
