"""The Kubernetes manifests in ``docs/kubernetes/`` parse as YAML and use only what the project
has: start's flags and variables, the health and metrics paths, one port throughout, the token
from a Secret; and their pods, by ordinal, cover every shard exactly once."""

from __future__ import annotations

from pathlib import Path

import yaml

from supervisor.cli import cli
from supervisor.config.settings import SETTINGS, resolve_start_settings
from supervisor.observe.health import PATHS

KUBE = Path(__file__).resolve().parents[2] / "docs" / "kubernetes"


def documents() -> list[dict]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(kind: str) -> list[dict]:
    return [doc for doc in documents() if doc["kind"] == kind]


def container() -> dict:
    (statefulset,) = of_kind("StatefulSet")
    (supervisor,) = statefulset["spec"]["template"]["spec"]["containers"]
    return supervisor


def flags_of(args: list[str]) -> list[str]:
    """``start``'s command line in the manifest's args, once click accepts it."""
    assert args[0] == "start"
    cli.commands["start"].make_context("start", list(args[1:]))
    return list(args[1:])


def test_every_file_parses_and_every_object_is_known():
    kinds = sorted(doc["kind"] for doc in documents())
    assert kinds == ["Secret", "Service", "StatefulSet"]
    for doc in documents():
        assert doc["apiVersion"] in ("v1", "apps/v1") and doc["metadata"]["name"]


def test_the_statefulset_uses_the_projects_flags_paths_and_port():
    (statefulset,) = of_kind("StatefulSet")
    (service,) = of_kind("Service")
    spec, pod = statefulset["spec"], statefulset["spec"]["template"]
    supervisor = container()
    assert supervisor["command"] == ["spectacles-supervisor"]
    known = {s.flag for s in SETTINGS}
    for arg in supervisor["args"][1:]:
        assert arg.split("=", 1)[0] in known, arg
    flags = flags_of(supervisor["args"])  # click accepts them all
    settings = resolve_start_settings(flags, {"HOSTNAME": "gateway-0", "DISCORD_TOKEN": "x"})
    port = settings.metrics_addr[1]
    assert supervisor["ports"] == [{"name": "metrics", "containerPort": port}]
    assert supervisor["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert supervisor["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"/healthz", "/readyz"} == set(PATHS)
    annotations = pod["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    assert service["spec"]["clusterIP"] == "None" and spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["ports"][0]["port"] == port
    # SIGTERM hands every shard over resumably within about 20 s: the grace period covers it
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30
    mount = supervisor["volumeMounts"][0]
    assert str(settings.state_dir) == mount["mountPath"]
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == mount["name"]


def test_the_token_comes_from_the_secret_and_never_from_args():
    (secret,) = of_kind("Secret")
    supervisor = container()
    env = {item["name"]: item for item in supervisor["env"]}
    assert "DISCORD_TOKEN" in env and not any("token" in arg.lower() for arg in supervisor["args"])
    known_envs = {name for s in SETTINGS for name in s.envs}
    for name, item in env.items():
        assert name in known_envs, name
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_the_pods_by_ordinal_cover_every_shard_once():
    (statefulset,) = of_kind("StatefulSet")
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    flags = flags_of(container()["args"])
    ranges = [
        resolve_start_settings(flags, {"HOSTNAME": f"{name}-{ordinal}"}).shard_ids for ordinal in range(replicas)
    ]
    count = resolve_start_settings(flags, {"HOSTNAME": f"{name}-0"}).shard_count
    assert [s for r in ranges for s in r] == list(range(count))
    assert ranges[3] == (12, 13, 14, 15)  # the README's example
