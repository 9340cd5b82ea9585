"""The `zlb` group: every command is listed and runs, and a command imports only its own role's modules."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tests.harness import REPO, scaled
from zlb.cli import main

# Every command `zlb --help` listed when the group began importing them on demand.
EVERY_COMMAND = (
    "balancer",
    "bench",
    "cancel",
    "client",
    "cluster",
    "dead",
    "down",
    "drain",
    "http",
    "keys",
    "logs",
    "monitor",
    "requests",
    "retry",
    "send",
    "server",
    "server-check",
    "servers",
    "status",
    "up",
)
# What a node has no use for: other roles, the web stack, the terminal UI, the HA client, the test libraries;
# and what only some runs need: zmq.auth reads curve key files (its thread is the balancer's ZAP handler, with
# asyncio), ctypes asks for the parent-death signal under a supervisor, hmac (secrets) maps in libcrypto.
NOT_FOR_A_NODE = (
    "balancer",
    "bench",
    "client_node",
    "ctypes",
    "etcd3gw",
    "hmac",
    "http_gateway",
    "hypothesis",
    "monitor",
    "rich",
    "starlette",
    "uvicorn",
    "zlb.admin_cli",
    "zlb.cluster",
    "zmq.auth",
)


def test_help_lists_every_command_with_its_one_line_help() -> None:
    """`zlb --help` names each command, each with the first line of its help."""
    shown = CliRunner().invoke(main, ["--help"], prog_name="zlb", terminal_width=200)
    assert shown.exit_code == 0, shown.output
    listed = dict(re.findall(r"^  ([a-z-]+) +(\S.*)$", shown.output.split("Commands:")[1], re.MULTILINE))
    assert tuple(sorted(listed)) == EVERY_COMMAND
    assert listed["server"] == "Run a server node that takes work from the balancer."


@pytest.mark.parametrize("name", EVERY_COMMAND)
def test_each_command_shows_its_own_help(name: str) -> None:
    """`zlb NAME --help` imports NAME's module and shows its usage."""
    shown = CliRunner().invoke(main, [name, "--help"], prog_name="zlb")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"Usage: zlb {name} ")


def _option_names(name: str) -> list[str]:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    return [flag for param in command.params for flag in param.opts]


def test_connecting_commands_get_the_curve_options_once() -> None:
    """A command that connects has --curve-secret and --server-key, once however often it is looked up;
    the balancer, which binds, has only its own curve options."""
    for name in ("server", "servers", "http"):
        _option_names(name)
        names = _option_names(name)
        assert names.count("--curve-secret") == names.count("--server-key") == 1, name
    assert "--server-key" not in _option_names("balancer")


def test_an_unknown_command_is_one_clear_line() -> None:
    """A misspelt command exits 2 naming it, importing nothing to find out."""
    shown = CliRunner().invoke(main, ["sever"], prog_name="zlb")
    assert shown.exit_code == 2
    assert "No such command 'sever'" in shown.output


def test_zlb_server_imports_no_other_role() -> None:
    """Resolving `zlb server` in a fresh interpreter loads the node and wire, none of NOT_FOR_A_NODE."""
    program = (
        "import json, sys, click\n"
        "from zlb.cli import main\n"
        "assert main.get_command(click.Context(main), 'server') is not None\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=scaled(20))
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "server_node.node" in loaded and "wire.protocol" in loaded  # the check sees what it should
    unwanted = [m for m in loaded if any(m == bad or m.startswith(bad + ".") for bad in NOT_FOR_A_NODE)]
    assert not unwanted, f"zlb server imports {unwanted}"
