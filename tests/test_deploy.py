"""deploy/kubernetes and the Containerfile (issue 25): Kustomize renders them, Kubernetes' schemas accept every
object, and they ask of zlb only what zlb does.

kubectl, with its built-in Kustomize, renders the base and each overlay; it must be on PATH (CI has it), and a
machine without it fails here rather than skipping. kubernetes-validate checks every object with its strict
schemas (unknown fields refused) for two Kubernetes versions. For a kind it has no schema for it raises
SchemaNotFoundError, which its command line prints as a WARN and exits 0 on: a silent pass. So the two custom
resources the manifests use, KEDA's ScaledObject and the Prometheus operator's ServiceMonitor, are checked
against schemas written down below from their CRDs and documentation, and any other kind without a schema
fails the test.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from kubernetes_validate import utils as kv

from http_gateway import metrics
from http_gateway.auth import Policy, allowed_host
from tests.harness import LiveBalancer, ProcessGroup, scaled
from wire.endpoints import ENDPOINT_ENV
from zlb.admin_cli import CHECK_MIN_WAIT_S, CHECK_TIMEOUT_S, MAX_CHECK_TIMEOUT_S
from zlb.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASE = "deploy/kubernetes"
KUSTOMIZATIONS = (BASE, f"{BASE}/overlays/dev", f"{BASE}/overlays/external-etcd")
# The oldest Kubernetes the manifests are for (unhealthyPodEvictionPolicy is GA from 1.31) and the newest
# kubernetes-validate knows.
K8S_VERSIONS = ("1.32.0", kv.latest_version())
RENDER_TIMEOUT_S = 60

# ---- the custom resources' schemas --------------------------------------------------------------------
#
# What each CRD's openAPIV3Schema defines at the levels the manifests use, with unknown fields refused
# (kubectl's default --validate=strict refuses them too; without it the API server would drop them
# silently). ScaledObject: keda.sh/v1alpha1 as KEDA 2.x defines it, and the prometheus trigger's metadata
# keys from KEDA's Prometheus scaler page. ServiceMonitor: monitoring.coreos.com/v1 of the Prometheus
# operator, its `authorization` being the SafeAuthorization (a type and a Secret key).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_PROMETHEUS_METADATA = {
    "type": "object",
    "required": ["serverAddress", "query", "threshold"],
    "properties": {
        key: {"type": "string", "minLength": 1}
        for key in (
            "serverAddress",
            "query",
            "threshold",
            "activationThreshold",
            "namespace",
            "customHeaders",
            "ignoreNullValues",
            "queryParameters",
            "unsafeSsl",
            "timeout",
            "authModes",
        )
    },
    "additionalProperties": False,
}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "advanced": {
                    "type": "object",
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                            "additionalProperties": False,
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                    "additionalProperties": False,
                },
                "cooldownPeriod": _INT32,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": _INT32,
                        "replicas": _INT32,
                        # KEDA 2.17 and newer.
                        "behavior": {
                            "enum": ["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]
                        },
                    },
                    "additionalProperties": False,
                },
                "idleReplicaCount": _INT32,
                "initialCooldownPeriod": _INT32,
                "maxReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "pollingInterval": _INT32,
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        key: {"type": "string"} for key in ("apiVersion", "kind", "name", "envSourceContainerName")
                    },
                    "additionalProperties": False,
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                                "additionalProperties": False,
                            },
                        },
                        "additionalProperties": False,
                        "if": {"properties": {"type": {"const": "prometheus"}}},
                        "then": {"properties": {"metadata": _PROMETHEUS_METADATA}},
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_SECRET_KEY = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string"}, "name": {"type": "string"}, "optional": {"type": "boolean"}},
    "additionalProperties": False,
}
_ENDPOINT_KEYS = (
    "authorization",
    "basicAuth",
    "bearerTokenFile",
    "bearerTokenSecret",
    "enableHttp2",
    "filterRunning",
    "followRedirects",
    "honorLabels",
    "honorTimestamps",
    "interval",
    "metricRelabelings",
    "noProxy",
    "oauth2",
    "params",
    "path",
    "port",
    "proxyConnectHeader",
    "proxyFromEnvironment",
    "proxyUrl",
    "relabelings",
    "scheme",
    "scrapeTimeout",
    "targetPort",
    "tlsConfig",
    "trackTimestampsStaleness",
)
_SPEC_KEYS = (
    "attachMetadata",
    "bodySizeLimit",
    "endpoints",
    "fallbackScrapeProtocol",
    "jobLabel",
    "keepDroppedTargets",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "namespaceSelector",
    "podTargetLabels",
    "sampleLimit",
    "scrapeClass",
    "scrapeProtocols",
    "selector",
    "targetLabels",
    "targetLimit",
)
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
    r"(([0-9]+)s)?(([0-9]+)ms)?)$",
}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector"],
            "propertyNames": {"enum": list(_SPEC_KEYS)},
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "propertyNames": {"enum": list(_ENDPOINT_KEYS)},
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "authorization": {
                                "type": "object",
                                "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY},
                                "additionalProperties": False,
                            },
                        },
                    },
                },
            },
        },
    },
    "additionalProperties": False,
}
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


# ---- rendering ------------------------------------------------------------------------------------------


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize PATH` renders."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with Kustomize) is needed to render deploy/kubernetes: install it; CI has it"
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / path)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed: {done.stderr[-3000:]}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def workloads(objects: tuple[dict[str, Any], ...]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"))


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    return only


def option(args: list[str], flag: str) -> str | None:
    """The value after `flag` in an argument list (or in `flag=value`), None when it is not there."""
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def zlb_invocations(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, list[str]]]:
    """Every zlb command line the manifests hold, with where it is: containers of the zlb image, exec hooks."""
    for workload in workloads(objects):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        for c in pod_spec(workload)["containers"]:
            if c["image"].split(":")[0].rsplit("/", 1)[-1] == "zlb":
                assert "command" not in c, f"{where}: the image's entrypoint is zlb; give args only"
                yield f"{where} args", c["args"]
            hooks = {f"{name}Probe": c.get(f"{name}Probe") for name in ("readiness", "liveness", "startup")}
            hooks["preStop"] = c.get("lifecycle", {}).get("preStop")
            for hook, spec in hooks.items():
                command = (spec or {}).get("exec", {}).get("command", [])
                if command[:1] == ["zlb"]:
                    yield f"{where} {hook}", command[1:]


def zlb_command(name: str) -> click.Command:
    """The `zlb NAME` command, its module imported as running it would."""
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"zlb has no command {name!r}"
    return command


@cache
def help_flags(command: str) -> frozenset[str]:
    """The options `zlb COMMAND --help` lists."""
    shown = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert shown.exit_code == 0, f"zlb {command} --help: {shown.output}"
    return frozenset(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", shown.output))


# ---- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_rendered_object_passes_strict_validation(path: str) -> None:
    """Each object of the base and of each overlay passes kubernetes-validate --strict, or its CRD's schema."""
    problems = []
    for obj in render(path):
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        for version in K8S_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.SchemaNotFoundError:
                schema = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
                if schema is None:
                    problems.append(f"{what}: no schema in kubernetes-validate {version} and none written here")
                else:
                    problems += [f"{what}: {e.json_path}: {e.message}" for e in _errors(schema, obj)]
            except kv.ValidationError as exc:
                problems.append(f"{what} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


def _errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[jsonschema.ValidationError]:
    return list(jsonschema.Draft202012Validator(schema).iter_errors(obj))


def test_kubernetes_validate_passes_unknown_kinds_silently() -> None:
    """Why the custom schemas exist: kubernetes-validate has none for KEDA, and its CLI warns and exits 0."""
    scaled = find(render(BASE), "ScaledObject", "zlb-server")
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate(scaled, K8S_VERSIONS[0], strict=True)
    broken = {**scaled, "spec": {"nonsense": True}}
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-"],
        input=yaml.safe_dump(broken),
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
    )
    assert done.returncode == 0 and "WARN" in done.stdout


def test_the_custom_schemas_refuse_what_their_crds_refuse() -> None:
    """A misspelt field, a prometheus trigger without its threshold, an unknown ServiceMonitor endpoint key fail."""
    objects = render(BASE)
    scaled = find(objects, "ScaledObject", "zlb-server")
    monitor = find(objects, "ServiceMonitor", "zlb-http")
    assert not _errors(SCALED_OBJECT, scaled) and not _errors(SERVICE_MONITOR, monitor)
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    no_threshold = copy.deepcopy(scaled)
    del no_threshold["spec"]["triggers"][0]["metadata"]["threshold"]
    number = copy.deepcopy(scaled)
    number["spec"]["triggers"][0]["metadata"]["threshold"] = 10  # KEDA's metadata values are strings
    for bad in (misspelt, no_threshold, number):
        assert _errors(SCALED_OBJECT, bad)
    unknown = copy.deepcopy(monitor)
    unknown["spec"]["endpoints"][0]["bearerToken"] = "x"
    assert _errors(SERVICE_MONITOR, unknown)


# ---- what the product expects ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_manifests_use_only_zlb_commands_and_options_that_exist(path: str) -> None:
    """Every zlb command line in the manifests (args, probes, hooks) names a command and options its --help lists."""
    invocations = list(zlb_invocations(render(path)))
    assert len(invocations) >= 8  # balancer, server and http args; their probes
    for where, args in invocations:
        command = args[0]
        assert command in main.list_commands(click.Context(main)), f"{where}: zlb has no command {command!r}"
        flags = {arg.split("=", 1)[0] for arg in args[1:] if arg.startswith("--")}
        missing = flags - help_flags(command)
        assert not missing, f"{where}: zlb {command} --help lists no {sorted(missing)}"


def test_the_balancer_pair_runs_zlb_balancer_with_ha() -> None:
    """Two members of a StatefulSet, each `zlb balancer --ha ... --replication ... --journal` on its own volume."""
    objects = render(BASE)
    balancer = find(objects, "StatefulSet", "zlb-balancer")
    assert balancer["spec"]["replicas"] == 2
    args = container(balancer)["args"]
    assert args[0] == "balancer"
    # HA flags: issue 21. Required here, and by `zlb balancer --help` through the test above.
    assert {"--ha", "--replication"} <= help_flags("balancer")
    assert option(args, "--ha") == "$(ZLB_HA)" and option(args, "--replication")
    env = {e["name"]: e for e in container(balancer)["env"]}
    ha_map = env["ZLB_HA"]["valueFrom"]["configMapKeyRef"]
    ha_url = find(objects, "ConfigMap", ha_map["name"])["data"][ha_map["key"]]
    assert re.fullmatch(r"etcd://zlb-etcd:2379/\w+", ha_url), ha_url
    journal = option(args, "--journal")
    (claim,) = balancer["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(balancer)["volumeMounts"]}
    assert journal and journal.startswith(mounts[claim["metadata"]["name"]] + "/")


def test_only_the_leader_is_ready_and_the_services_route_accordingly() -> None:
    """Readiness asks --leader, liveness only that it answers; the Service takes ready pods, the headless one all."""
    objects = render(BASE)
    balancer = find(objects, "StatefulSet", "zlb-balancer")
    c = container(balancer)
    # The probes reach control through ZLB_CONTROL, the pod's address (see the test below).
    assert c["readinessProbe"]["exec"]["command"] == ["zlb", "status", "--check", "--leader"]
    assert c["livenessProbe"]["exec"]["command"] == ["zlb", "status", "--check"]
    labels = balancer["spec"]["template"]["metadata"]["labels"]
    front = find(objects, "Service", "zlb-balancer")
    assert front["spec"]["selector"].items() <= labels.items()
    assert not front["spec"].get("publishNotReadyAddresses") and front["spec"].get("clusterIP") != "None"
    members = find(objects, "Service", balancer["spec"]["serviceName"])
    assert members["spec"]["clusterIP"] == "None" and members["spec"]["publishNotReadyAddresses"] is True
    assert members["spec"]["selector"].items() <= labels.items()
    # What a standby redirects peers to, and follows the leader at, is the member's own pod address.
    pod_ip = {e["name"]: e for e in c["env"]}["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod_ip == "status.podIP"
    # Every endpoint: a wildcard bind would be advertised in etcd as the bare pod name, which other pods do
    # not resolve (balancer/member.py, advertised).
    for flag in ("--frontend", "--backend", "--events", "--control", "--replication"):
        assert option(c["args"], flag).startswith("tcp://$(POD_IP):"), flag
    replication_port = int(option(c["args"], "--replication").rsplit(":", 1)[1])
    assert replication_port in {p["port"] for p in members["spec"]["ports"]}


def container_env(c: dict[str, Any], pod_ip: str = "10.1.2.3", namespace: str = "default") -> dict[str, str]:
    """The container's environment as the kubelet makes it: each $(VAR) of a value expanded from the variables
    before it; the pod's IP and namespace given, other references (a ConfigMap's key) left as placeholders."""
    fields = {"status.podIP": pod_ip, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            env[var["name"]] = fields.get(var["valueFrom"].get("fieldRef", {}).get("fieldPath"), f"<{var['name']}>")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of a value, command or argument; unknown references stay as they are."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), text)


def probe_command(c: dict[str, Any], probe: str) -> list[str]:
    """A probe's exec command as the kubelet runs it: $(VAR) expanded only for variables with a literal value
    (kubecontainer.ExpandContainerCommandOnlyStatic), not for a fieldRef such as POD_IP."""
    static = {var["name"]: var["value"] for var in c.get("env", []) if "value" in var}
    return [expand(arg, static) for arg in c[probe]["exec"]["command"]]


def test_the_balancer_probes_reach_control_on_the_pod_address(procs: ProcessGroup, balancer: LiveBalancer) -> None:
    """The probes name no --control: they read ZLB_CONTROL, which the container's env sets to the --control the
    balancer binds (tcp://$(POD_IP):5558). Run as the kubelet would, against a live balancer, they pass."""
    c = container(find(render(BASE), "StatefulSet", "zlb-balancer"))
    env = container_env(c, pod_ip="10.1.2.3")
    assert env["ZLB_CONTROL"] == option(c["args"], "--control").replace("$(POD_IP)", "10.1.2.3")
    # On this machine, the live balancer stands in for the pod: its control port for 5558, loopback for the IP.
    local = container_env(c, pod_ip="127.0.0.1")["ZLB_CONTROL"]
    assert local == f"tcp://127.0.0.1:{_default_port('control')}"
    pod_env = {**procs.env, **container_env(c, pod_ip="127.0.0.1"), "ZLB_CONTROL": balancer.endpoints.control}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = probe_command(c, probe)
        assert "--control" not in command and not any("$(" in arg for arg in command), (probe, command)
        assert command[0] == "zlb"
        done = subprocess.run(
            [sys.executable, "-m", "zlb", *command[1:]],
            env=pod_env,
            capture_output=True,
            text=True,
            timeout=scaled(20),
            stdin=subprocess.DEVNULL,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), probe


def test_probes_outlast_the_check_they_run() -> None:
    """Each `zlb status --check` probe's timeoutSeconds exceeds the check's own bound (its --timeout, counted from
    its start, or the start plus CHECK_MIN_WAIT_S on a machine loaded past that) with room for the exit, and
    fits its period; the balancer's readiness allows three failures (one slow probe would empty the Service)."""
    balancer = find(render(BASE), "StatefulSet", "zlb-balancer")
    c = container(balancer)
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[name]
        command = probe["exec"]["command"]
        assert command[:3] == ["zlb", "status", "--check"], name
        bound = float(option(command, "--timeout") or CHECK_TIMEOUT_S)
        assert bound <= MAX_CHECK_TIMEOUT_S
        assert bound + CHECK_MIN_WAIT_S + 2 <= probe["timeoutSeconds"] <= probe["periodSeconds"], name
    assert c["readinessProbe"]["failureThreshold"] >= 3


def _default_port(role: str) -> int:
    return int(ENDPOINT_ENV[role][1].rsplit(":", 1)[1])


def test_ports_are_the_defaults_of_the_code() -> None:
    """Every endpoint in the manifests uses its role's default port (wire/endpoints.py); zlb http its --port default."""
    objects = render(BASE)
    balancer = find(objects, "StatefulSet", "zlb-balancer")
    named = {p["name"]: p["containerPort"] for p in container(balancer)["ports"]}
    service = {p["name"]: p for p in find(objects, "Service", "zlb-balancer")["spec"]["ports"]}
    for role in ENDPOINT_ENV:
        assert named[role] == service[role]["port"] == _default_port(role), role
        assert service[role]["targetPort"] == role
    for where, args in zlb_invocations(objects):
        for role in ENDPOINT_ENV:
            value = option(args, f"--{role}")
            if value is not None:
                assert value.rsplit(":", 1)[1] == str(_default_port(role)), f"{where}: --{role} {value}"
                host = value.split("//")[1].rsplit(":", 1)[0]
                assert host in ("$(POD_IP)", "zlb-balancer"), f"{where}: --{role} {value}"
    gateway = find(objects, "Deployment", "zlb-http")
    (port_param,) = [p for p in zlb_command("http").params if p.name == "port"]
    assert option(container(gateway)["args"], "--port") == str(port_param.default)
    assert container(gateway)["ports"] == [{"name": "http", "containerPort": port_param.default}]
    etcd_ports = {p["name"]: p["port"] for p in find(objects, "Service", "zlb-etcd")["spec"]["ports"]}
    assert etcd_ports == {"client": 2379}


def test_server_nodes_probe_drain_and_outlast_their_grace() -> None:
    """Readiness and liveness probes, a preStop that makes the node leave, a grace period above --grace-s, a PDB."""
    objects = render(BASE)
    servers = find(objects, "Deployment", "zlb-server")
    c = container(servers)
    assert c["args"][0] == "server"
    # The probes read the node's own --alive-file, in a writable volume; neither asks the balancer, so that a
    # balancer outage restarts no node (a SIGSTOPped node fails them: tests/integration/test_status_check.py).
    alive = option(c["args"], "--alive-file")
    assert alive and any(alive.startswith(m["mountPath"] + "/") for m in c["volumeMounts"])
    check = ["zlb", "server-check", "--alive-file", alive]
    assert c["readinessProbe"]["exec"]["command"] == [*check, "--joined"]
    liveness = c["livenessProbe"]
    assert liveness["exec"]["command"][:4] == check and "--joined" not in liveness["exec"]["command"]
    max_age = float(option(liveness["exec"]["command"], "--max-age") or 30)
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= max_age  # a stall of a minute or so
    # The node's own drain: SIGTERM to PID 1, which is zlb (the image's entrypoint), says LEAVING.
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sh", "-c", "kill -TERM 1"]
    (grace_param,) = [p for p in zlb_command("server").params if p.name == "grace_s"]
    grace_s = float(option(c["args"], "--grace-s") or grace_param.default)
    assert pod_spec(servers)["terminationGracePeriodSeconds"] >= grace_s + 5
    pdb = find(objects, "PodDisruptionBudget", "zlb-server")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= servers["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_scales_the_nodes_on_a_metric_the_gateway_exports() -> None:
    """The ScaledObject targets the node Deployment, with a prometheus trigger whose query reads zlb's work: the
    queue plus what runs (not the queue alone: busy nodes with a short queue would be scaled in, then out)."""
    objects = render(BASE)
    scaled = find(objects, "ScaledObject", "zlb-server")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        find(objects, "Deployment", "zlb-server")["metadata"]["name"],
    )
    assert "replicas" not in find(objects, "Deployment", "zlb-server")["spec"]  # KEDA owns the count
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    status = {"uptime_s": 1, "queue_depth": 0, "in_flight": 0, "bad_input": {}, "journal": None}
    exported = {family.name for family in metrics.families(status, [])}
    used = set(re.findall(r"\bzlb_\w+", query))
    assert used == {"zlb_queue_depth", "zlb_in_flight"} and used <= exported
    monitor = find(objects, "ServiceMonitor", "zlb-http")
    for name in used:  # the job label a ServiceMonitor sets: its Service's name
        assert f'{name}{{job="{monitor["metadata"]["name"]}"}}' in query, name
    # The target per node is what a node runs at once: its --capacity.
    args = container(find(objects, "Deployment", "zlb-server"))["args"]
    assert float(trigger["metadata"]["threshold"]) == float(option(args, "--capacity"))


def test_keda_keeps_the_nodes_when_the_metric_is_missing() -> None:
    """A gateway that cannot reach the balancer exports zlb_up 0 and nothing else: the query's result is then
    empty, which ignoreNullValues "false" makes an error (not 0, which would scale every node in); on errors
    the HPA keeps the count, and the fallback keeps at least the current one."""

    def unreachable() -> Any:
        raise ConnectionError

    away = {family.name for family in metrics.BalancerCollector(unreachable, ConnectionError).collect()}
    assert away == {"zlb_up"}
    for path in KUSTOMIZATIONS:
        scaled = find(render(path), "ScaledObject", "zlb-server")
        (trigger,) = scaled["spec"]["triggers"]
        assert not set(re.findall(r"\bzlb_\w+", trigger["metadata"]["query"])) & away, path
        assert trigger["metadata"]["ignoreNullValues"] == "false", path
        fallback = scaled["spec"]["fallback"]
        assert fallback["failureThreshold"] >= 1 and fallback.get("behavior") == "currentReplicasIfHigher", path
        assert scaled["spec"]["minReplicaCount"] <= fallback["replicas"] <= scaled["spec"]["maxReplicaCount"], path


def test_the_gateway_is_scraped_with_its_token() -> None:
    """zlb http runs behind a Service whose /metrics a ServiceMonitor scrapes with the Secret the gateway reads."""
    objects = render(BASE)
    gateway = find(objects, "Deployment", "zlb-http")
    c = container(gateway)
    assert c["args"][0] == "http" and option(c["args"], "--host") == "0.0.0.0"
    service = find(objects, "Service", "zlb-http")
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    monitor = find(objects, "ServiceMonitor", "zlb-http")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    token = {e["name"]: e for e in c["env"]}["ZLB_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": token}
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"  # the one path that needs no token


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_gateway_answers_to_every_name_of_its_service(path: str) -> None:
    """zlb-http, zlb-http.NAMESPACE, ...svc and ...svc.cluster.local, with a port or without, in whatever namespace
    the pod runs (the base names none: kubectl's; the dev overlay zlb-dev); any other Host is refused."""
    objects = render(path)
    gateway = find(objects, "Deployment", "zlb-http")
    service = find(objects, "Service", "zlb-http")
    namespace = gateway["metadata"].get("namespace", "team-a")  # the base: wherever it is applied
    assert service["metadata"].get("namespace", "team-a") == namespace
    c = container(gateway)
    env = container_env(c, namespace=namespace)
    args = [expand(arg, env) for arg in c["args"]]
    hosts = tuple(allowed_host(args[i + 1]) for i, arg in enumerate(args) if arg == "--allowed-host")
    policy = Policy.for_host(option(args, "--host"), "t" * 32, hosts)
    port = service["spec"]["ports"][0]["port"]
    name = service["metadata"]["name"]
    for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"):
        for header in (host, f"{host}:{port}", f"{host}."):
            assert policy.host_refusal(header) == "", header
    for other in ("attacker.example", f"{name}.elsewhere.svc.cluster.local", f"{name}.{namespace}.svc.evil"):
        assert policy.host_refusal(other), other


def test_an_etcd_runs_in_the_base_and_not_with_an_external_one() -> None:
    """The base runs etcd for the election; the external-etcd overlay removes it and points ZLB_HA elsewhere."""
    etcd = find(render(BASE), "StatefulSet", "zlb-etcd")
    assert container(etcd)["command"] == ["etcd"] and etcd["spec"]["replicas"] == 3
    external = render(f"{BASE}/overlays/external-etcd")
    assert not [o for o in external if "etcd" in o["metadata"]["name"]]
    (ha_map,) = [o for o in external if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("zlb-ha")]
    assert "zlb-etcd" not in ha_map["data"]["ZLB_HA"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_workload_is_non_root_and_bounded(path: str) -> None:
    """Each pod runs as non-root with RuntimeDefault seccomp; each container drops every capability, cannot
    escalate, has a read-only root and CPU and memory requests and limits."""
    found = list(workloads(render(path)))
    assert len(found) >= 3
    for workload in found:
        spec = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][bound].keys(), f"{where} {c['name']} {bound}"


def test_the_containerfile_is_multi_stage_non_root_with_zlb_as_entrypoint() -> None:
    """Two stages or more, a numeric non-root USER that the manifests run zlb as, ENTRYPOINT ["zlb"]."""
    lines = [ln.strip() for ln in (ROOT / "Containerfile").read_text().splitlines() if not ln.startswith("#")]
    assert sum(ln.startswith("FROM ") for ln in lines) >= 2
    assert any(re.match(r"FROM \S+ AS build$", ln) for ln in lines)
    (user,) = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    uid = int(user.split(":")[0])
    assert uid > 0
    assert [ln for ln in lines if ln.startswith("ENTRYPOINT")] == ['ENTRYPOINT ["zlb"]']
    for workload in workloads(render(BASE)):
        if container(workload)["image"].startswith("zlb"):
            assert pod_spec(workload)["securityContext"]["runAsUser"] == uid, workload["metadata"]["name"]
