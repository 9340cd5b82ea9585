"""Unit tests of curve key handling and the exposure warning (no sockets connect anywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from wire import security
from zlb.cli import main


def test_keys_generate_writes_a_usable_pair(tmp_path: Path):
    """`zlb keys generate` writes NAME.key and NAME.key_secret whose keys load back as a pair."""
    done = CliRunner().invoke(main, ["keys", "generate", str(tmp_path), "--name", "node1"])
    assert done.exit_code == 0, done.output
    public, secret = security.load_secret(str(tmp_path / "node1.key_secret"))
    assert security.load_public(str(tmp_path / "node1.key")) == public
    assert len(public) == len(secret) == 40
    assert (tmp_path / "node1.key_secret").stat().st_mode & 0o077 == 0


def test_keys_generate_never_overwrites(tmp_path: Path):
    """A second pair of the same name is refused with a one-line error."""
    CliRunner().invoke(main, ["keys", "generate", str(tmp_path), "--name", "a"])
    again = CliRunner().invoke(main, ["keys", "generate", str(tmp_path), "--name", "a"])
    assert again.exit_code == 1
    assert "exists" in again.output


def test_client_keys_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With both variables set a socket gets curve keys; with neither it is left alone; one alone is an error."""
    own_sec = tmp_path / "me.key_secret"
    server_pub, _ = security.generate_keys(str(tmp_path), "balancer")
    security.generate_keys(str(tmp_path), "me")
    monkeypatch.delenv(security.CURVE_SECRET_ENV, raising=False)
    monkeypatch.delenv(security.SERVER_KEY_ENV, raising=False)
    assert security.client_keys() is None
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(own_sec))
    with pytest.raises(security.CurveConfigError, match="both"):
        security.client_keys()
    monkeypatch.setenv(security.SERVER_KEY_ENV, server_pub)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        security.secure_client_socket(sock)
        assert sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
    finally:
        sock.close(linger=0)


def test_a_public_key_file_is_not_a_secret(tmp_path: Path):
    """Passing NAME.key where the secret is needed is a clear error."""
    public, _secret = security.generate_keys(str(tmp_path), "x")
    with pytest.raises(security.CurveConfigError, match="no secret key"):
        security.load_secret(public)
    with pytest.raises(security.CurveConfigError, match="cannot read"):
        security.load_secret(str(tmp_path / "missing"))


def test_exposed_endpoints_are_the_non_loopback_tcp_ones():
    """Loopback and ipc endpoints are private; wildcard and real addresses are exposed."""
    eps = ["tcp://127.0.0.1:1", "tcp://localhost:2", "ipc:///tmp/x", "tcp://*:3", "tcp://0.0.0.0:4", "tcp://10.1.2.3:5"]
    assert security.exposed_endpoints(eps) == ["tcp://*:3", "tcp://0.0.0.0:4", "tcp://10.1.2.3:5"]


def test_curve_options_need_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`--curve-secret` without `--server-key` is a usage error before anything connects."""
    monkeypatch.delenv(security.SERVER_KEY_ENV, raising=False)
    _pub, secret = security.generate_keys(str(tmp_path), "me")
    # Naming both variables makes CliRunner restore them afterwards (the option callback sets them).
    env = {security.SERVER_KEY_ENV: None, security.CURVE_SECRET_ENV: None}
    done = CliRunner().invoke(main, ["servers", "--curve-secret", secret], env=env)
    assert done.exit_code == 2
    assert "both --curve-secret and --server-key" in done.output


def test_a_socket_reconnecting_many_times_can_always_watch_for_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Each new socket gets its own refusal monitor, even when it reuses the closed one's descriptor."""
    security.generate_keys(str(tmp_path), "me")
    server_pub, _ = security.generate_keys(str(tmp_path), "balancer")
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(tmp_path / "me.key_secret"))
    monkeypatch.setenv(security.SERVER_KEY_ENV, server_pub)
    ctx = zmq.Context.instance()
    for _ in range(200):  # as a node does after each lost connection
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        security.secure_client_socket(sock)
        refusals = security.KeyRefusals(sock)
        sock.connect("tcp://127.0.0.1:9")
        assert not refusals.seen()
        refusals.close()
        sock.close(linger=0)
