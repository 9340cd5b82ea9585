"""tools.walk traces one real request through a balancer, a node and a Client (docs/ARCHITECTURE.md cites it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(30)
def test_walk_traces_one_request_in_all_three_processes():
    out = subprocess.run(
        [sys.executable, "-m", "tools.walk", "--runs", "1", "--json", "--warmup", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    run = result["runs"][0]
    for role in ("client", "balancer", "node"):
        proc = run["processes"][role]
        assert proc["files"] > 0 and proc["moves"] > 0 and proc["call_and_return"] > 0, (role, proc)
    assert run["total"]["moves"] == sum(run["processes"][r]["moves"] for r in ("client", "balancer", "node"))
    client_walk = run["processes"]["client"]["windows"][0]["walk"]
    assert next(step["file"] for step in client_walk if step["file"]) == "client_node/client.py"
    assert "balancer/scheduler.py" in run["processes"]["balancer"]["file_list"]
    assert len(run["processes"]["balancer"]["windows"]) == 2  # the submit, then the result
    assert "server_node/node.py" in run["processes"]["node"]["file_list"]
    assert result["method"].startswith("Method:")
