"""The benchmark scenarios. Each returns one JSON-ready record and table rows.

The scenarios live in three modules (scenarios_load: speed under load;
scenarios_scale: failover, queue depth, many nodes; scenarios_ha: an HA pair)
over what they share (scenario_kit); `Runner` holds one of each, and `zlb bench` runs them by name.
"""

from __future__ import annotations

from bench.harness import Bench
from bench.scenario_kit import COMMON_FIELDS, SCENARIO_FIELDS, SCENARIOS, BenchConfig, Outcome
from bench.scenarios_ha import HaScenarios
from bench.scenarios_load import LoadScenarios
from bench.scenarios_scale import ScaleScenarios

__all__ = ["COMMON_FIELDS", "SCENARIOS", "SCENARIO_FIELDS", "BenchConfig", "Outcome", "Runner"]


class Runner:
    """Every scenario, run by name (`run("throughput")` calls `scenario_throughput` of the group that has it)."""

    def __init__(self, bench: Bench, config: BenchConfig) -> None:
        self._groups = (
            LoadScenarios(bench, config),
            ScaleScenarios(bench, config),
            HaScenarios(bench, config),
        )

    def run(self, name: str) -> Outcome:
        for group in self._groups:
            scenario = getattr(group, f"scenario_{name}", None)
            if scenario is not None:
                return scenario()
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
