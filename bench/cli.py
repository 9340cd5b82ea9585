"""`zlb bench`: the measured truth about speed, reproducible with one command."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
from typing import Any

import click
from click.core import ParameterSource

from bench import report
from bench.harness import Bench, BenchError
from bench.scenario_kit import REPLACED
from bench.scenarios import SCENARIOS, BenchConfig, Outcome, Runner

try:
    from wire.options import FiniteRange
except ImportError:  # an older checkout's wire/ under this bench (python -m tools.by_commit --same-bench)
    FiniteRange = click.FloatRange  # type: ignore[misc,assignment]

# A thousand node connections need more descriptors than the usual soft limit of 1024.
WANTED_OPEN_FILES = 16_384


def parse_scenarios(values: tuple[str, ...]) -> list[str]:
    """Scenario names from repeated or comma-separated options, in the canonical order (a replaced name,
    `payload`, stands for the scenario that replaced it)."""
    names = [REPLACED.get(n.strip(), n.strip()) for v in values for n in v.split(",") if n.strip()]
    if values and not names:
        raise click.BadParameter(
            f"no scenario named in {', '.join(map(repr, values))}; choose from {', '.join(SCENARIOS)}"
        )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    chosen = set(names) or set(SCENARIOS)
    return [n for n in SCENARIOS if n in chosen]


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(WANTED_OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _interrupt(*_args: Any) -> None:
    raise KeyboardInterrupt


def run_bench(config: BenchConfig, names: list[str], as_json: bool) -> int:
    """Run the scenarios, print the table or JSON, and stop every process started."""
    _raise_open_files_limit()
    signal.signal(signal.SIGTERM, _interrupt)
    outcomes: dict[str, Outcome] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zlb-bench-") as workdir:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        bench = Bench(workdir, env)
        runner = Runner(bench, config)
        try:
            for name in names:
                if not as_json:
                    click.echo(f"running {name} ...", err=True)
                began = time.monotonic()
                outcomes[name] = runner.run(name)
                # How long each scenario took, so a slow one is visible (the --quick smoke has a time budget).
                outcomes[name].record["scenario_s"] = round(time.monotonic() - began, 2)
        except BenchError as exc:
            click.echo(f"Error: {name}: {exc}", err=True)
            return 1
        except KeyboardInterrupt:
            click.echo("zlb bench: interrupted", err=True)
            return 130
        finally:
            bench.procs.stop_all()
            pids = " ".join(str(pid) for pid in bench.procs.started_pids)
            click.echo(f"zlb bench: stopped every process it started; pids: {pids}", err=True)
    if as_json:
        click.echo(json.dumps({name: o.record for name, o in outcomes.items()}, indent=2))
        return 0
    rows = [r for o in outcomes.values() for r in o.rows]
    for line in report.table(rows):
        click.echo(line)
    click.echo("")
    for o in outcomes.values():
        for note in o.notes:
            click.echo(note)
    click.echo(f"({time.monotonic() - started:.0f} s in total)")
    return 0


@click.command()
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    help=f"Scenario to run (repeat or comma-separate; default all): {', '.join(SCENARIOS)}.",
)
@click.option("--nodes", type=click.IntRange(1, 64), default=4, show_default=True, help="Echo server nodes.")
@click.option("--clients", type=click.IntRange(1, 64), default=2, show_default=True, help="Load-generating clients.")
@click.option(
    "--window", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Requests in flight per client."
)
@click.option(
    "--requests",
    type=click.IntRange(1),
    default=None,
    help="Requests per measurement instead of --duration (userpath, capacity1: Client API submits in all [50000]).",
)
@click.option(
    "--duration", type=FiniteRange(0.1, 600), default=3.0, show_default=True, help="Seconds per measurement."
)
@click.option(
    "--capacity", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Capacity of each echo node."
)
@click.option(
    "--queue-size", type=click.IntRange(1), default=None, help="Requests queued by the queue scenario [1000000]."
)
@click.option(
    "--queue-rate",
    type=FiniteRange(0, 1e9),
    default=0.0,
    help="Pace the queue scenario's sender (requests/s); 0 sends one burst, so the balancer's RSS "
    "also holds libzmq's receive buffers from the burst.",
)
@click.option(
    "--sim-nodes", type=click.IntRange(1, 10_000), default=None, help="Simulated nodes in the nodes scenario [1000]."
)
@click.option(
    "--burst", type=click.IntRange(1), default=None, help="Requests the million scenario submits at once [1000000]."
)
@click.option(
    "--takeovers", type=click.IntRange(1, 1000), default=None, help="Leader kills in the ha scenario [10; --quick 2]."
)
@click.option("--quick", is_flag=True, help="Tiny counts: every scenario in a few seconds (a smoke run).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object keyed by scenario name.")
def bench(
    scenarios: tuple[str, ...],
    nodes: int,
    clients: int,
    window: int,
    requests: int | None,
    duration: float,
    capacity: int,
    queue_size: int | None,
    queue_rate: float,
    sim_nodes: int | None,
    burst: int | None,
    takeovers: int | None,
    quick: bool,
    as_json: bool,
) -> None:
    """Measure zlb against the frame relay and its targets: every scenario's note says which."""
    names = parse_scenarios(scenarios)
    for old in sorted({n.strip() for v in scenarios for n in v.split(",")} & set(REPLACED)):
        click.echo(f"zlb bench: scenario {old} was replaced by {REPLACED[old]}; running {REPLACED[old]}", err=True)
    config = BenchConfig.quick() if quick else BenchConfig()
    given = click.get_current_context().get_parameter_source
    # Options given on the command line win; otherwise the (quick or full) defaults stand.
    for name, value in (
        ("nodes", nodes),
        ("clients", clients),
        ("window", window),
        ("requests", requests),
        ("duration", duration),
        ("capacity", capacity),
        ("queue_size", queue_size),
        ("queue_rate", queue_rate),
        ("sim_nodes", sim_nodes),
        ("burst", burst),
        ("takeovers", takeovers),
    ):
        if given(name) is not ParameterSource.DEFAULT and value is not None:
            setattr(config, name, value)
    if requests is not None:
        config.user_requests = requests  # the user path counts submits, not a duration
    sys.exit(run_bench(config, names, as_json))
