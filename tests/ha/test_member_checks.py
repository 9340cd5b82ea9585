"""A member that could block or split its group is refused before it campaigns, with one line."""

from __future__ import annotations

import pytest

from tests.ha.cluster import Etcd
from tests.harness import Endpoints, ProcessGroup, free_port


def member_args(etcd: Etcd, group: str, replication: str, journal: str, e: Endpoints) -> list[str]:
    return [
        "balancer", "--ha", f"etcd://{etcd.url}/{group}", "--replication", replication, "--journal", journal,
        "--frontend", e.frontend, "--backend", e.backend, "--events", e.events, "--control", e.control,
        "--log-file", "",
    ]  # fmt: skip


@pytest.mark.timeout(60)
def test_a_member_whose_name_another_live_member_holds_exits(procs: ProcessGroup):
    """Two hosts given one --replication endpoint would share a name in etcd (and a leadership): the member
    that finds its name held by a live lease (made here by hand) waits out a predecessor's lease, then exits 1."""
    import etcd3gw

    etcd = Etcd(procs.workdir)
    etcd.start()
    try:
        replication = f"tcp://127.0.0.1:{free_port()}"
        host, port = etcd.url.split(":")
        client = etcd3gw.client(host=host, port=int(port), api_path="/v3/")
        lease = client.lease(60)
        client.put(f"/zlb/g1/members/{replication}", "{}", lease=lease)
        member = procs.start("dup", *member_args(etcd, "g1", replication, str(procs.workdir / "j"), Endpoints.fresh()))
        assert member.wait(20) == 1
        assert "uses the name" in member.stderr() and "give each member its own" in member.stderr()
        lease.revoke()
    finally:
        etcd.stop()


@pytest.mark.timeout(60)
def test_an_unusable_replication_endpoint_or_another_groups_journal_is_refused(procs: ProcessGroup):
    etcd = Etcd(procs.workdir)
    etcd.start()
    try:
        journal = str(procs.workdir / "j")
        e = Endpoints.fresh()
        cases = [
            (f"tcp://127.0.0.1:{free_port()}", "g1", e.frontend, "is also this balancer's --frontend"),
            ("tcp://256.1.1.1:5", "g1", None, "cannot bind --replication"),
        ]
        for replication, group, _same, said in cases:
            if _same is not None:
                replication = _same
            done = procs.run(*member_args(etcd, group, replication, journal, e), timeout=20)
            assert done.returncode == 1 and said in done.stderr, done.stderr
        with open(f"{journal}.group", "w", encoding="utf-8") as fh:
            fh.write("other\n")
        done = procs.run(*member_args(etcd, "g1", f"tcp://127.0.0.1:{free_port()}", journal, e), timeout=20)
        assert done.returncode == 1 and "belongs to HA group 'other'" in done.stderr, done.stderr
        done = procs.run(*member_args(etcd, "g1?x=1", f"tcp://127.0.0.1:{free_port()}", journal, e), timeout=20)
        assert done.returncode == 2 and "no ?query" in done.stderr, done.stderr
    finally:
        etcd.stop()
