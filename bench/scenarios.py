"""The benchmark scenarios. Each returns one JSON-ready record and table rows.

The scenarios live in four modules (scenarios_load: speed under load;
scenarios_shapes: the shapes of issue 23 against the frame relay; scenarios_scale:
failover, a node killed, queue depth, many nodes; scenarios_ha: an HA pair)
over what they share (scenario_kit); `Runner` holds one of each, and `zlb bench` runs them by name.
Every record says which balancer defaults its scenario changed (`non_default`, bench/defaults.py).
"""

from __future__ import annotations

from bench import defaults
from bench.harness import Bench
from bench.scenario_kit import COMMON_FIELDS, SCENARIO_FIELDS, SCENARIOS, BenchConfig, Outcome
from bench.scenarios_ha import HaScenarios
from bench.scenarios_load import LoadScenarios
from bench.scenarios_scale import ScaleScenarios
from bench.scenarios_shapes import ShapeScenarios

__all__ = ["COMMON_FIELDS", "SCENARIOS", "SCENARIO_FIELDS", "BenchConfig", "Outcome", "Runner"]


class Runner:
    """Every scenario, run by name (`run("throughput")` calls `scenario_throughput` of the group that has it)."""

    def __init__(self, bench: Bench, config: BenchConfig) -> None:
        self._bench = bench
        self._groups = (
            LoadScenarios(bench, config),
            ShapeScenarios(bench, config),
            ScaleScenarios(bench, config),
            HaScenarios(bench, config),
        )

    def run(self, name: str) -> Outcome:
        """Run one scenario; its record names every balancer default it changed, and so does a note."""
        for group in self._groups:
            scenario = getattr(group, f"scenario_{name}", None)
            if scenario is not None:
                self._bench.non_default.clear()
                outcome = scenario()
                changed = dict(self._bench.non_default)
                outcome.record["non_default"] = changed
                if changed:
                    outcome.notes.append(f"{name}: the balancer ran with NON-DEFAULT {defaults.describe(changed)}")
                return outcome
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
