"""The benchmark scenarios. Each returns one JSON-ready record and table rows.

The scenarios live in two modules (scenarios_load: speed under load;
scenarios_scale: failover, queue depth, many nodes) over what they share
(scenario_kit); `Runner` is all of them, and `zlb bench` runs them by name.
"""

from __future__ import annotations

from bench.scenario_kit import COMMON_FIELDS, SCENARIO_FIELDS, SCENARIOS, BenchConfig, Outcome
from bench.scenarios_load import LoadScenarios
from bench.scenarios_scale import ScaleScenarios

__all__ = ["COMMON_FIELDS", "SCENARIOS", "SCENARIO_FIELDS", "BenchConfig", "Outcome", "Runner"]


class Runner(LoadScenarios, ScaleScenarios):
    """Every scenario, run by name (`run("throughput")` calls `scenario_throughput`)."""
