"""cluster/: Ray cluster launcher YAMLs against Ray's own cluster schema, KubeRay manifests against
the KubeRay CRDs, and the network-exposure rules both must keep (only port 8000 public)."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY_CRDS = REPO.parent / "shared" / "kuberay"
LAUNCHER_YAMLS = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_YAMLS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAY_PRIVATE_PORTS = {6379, 8265, 10001}


def ray_cluster_schema() -> dict[str, Any]:
    return json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())


def launcher(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_there_are_aws_and_gcp_launcher_yamls() -> None:
    providers = {launcher(p)["provider"]["type"] for p in LAUNCHER_YAMLS}
    assert providers == {"aws", "gcp"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_matches_ray_schema(path: Path) -> None:
    config = launcher(path)
    jsonschema.validate(config, ray_cluster_schema())
    # Ray's own launcher-side validation after filling the provider's defaults (no cloud calls).
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_check_catches_a_typo() -> None:
    config = launcher(LAUNCHER_YAMLS[0])
    config["available_node_types"]["head"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(config, ray_cluster_schema())


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_keeps_ray_ports_private(path: Path) -> None:
    config = launcher(path)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    opened = {port for rule in rules for port in range(rule["FromPort"], rule["ToPort"] + 1)}
    assert opened <= {8000}
    for rule in rules:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", [])), "8000 only for the VPC"


def header(path: Path) -> str:
    """The comment block at the top of a YAML: the commands it tells the operator to run."""
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_token_auth_as_in_the_readme(path: Path) -> None:
    """Ray's token auth the README's way: one token file, on every node at Ray's default path, and
    RAY_AUTH_MODE=token wherever Ray starts and in the operator's shell."""
    config = launcher(path)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert re.search(r"(^|[;\s])RAY_AUTH_MODE=token\s+(\w+=\S*\s+)*ray start\b", command), command
    assert "RAY_AUTH_TOKEN" not in path.read_text(), "the token comes from the mounted file, never the YAML"
    text = header(path)
    steps = ["export RAY_AUTH_MODE=token", "ray get-auth-token --generate", "ray up", "serve deploy"]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), f"{path.name} header: {steps} in this order"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_gpu_pools_and_setup(path: Path) -> None:
    config = launcher(path)
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    machine_types = {v["node_config"].get("InstanceType") or v["node_config"]["machineType"] for v in workers.values()}
    assert machine_types in ({"p4d.24xlarge", "p4de.24xlarge"}, {"a2-highgpu-8g", "a2-ultragpu-8g"})
    assert all(v["min_workers"] <= v["max_workers"] for v in workers.values())
    assert sum(v["max_workers"] for v in workers.values()) <= config["max_workers"]
    assert any("[gpu]" in c and "serve_app-" in c for c in config["worker_setup_commands"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_commands_are_valid_shell(path: Path) -> None:
    config = launcher(path)
    keys = ("initialization_commands", "head_setup_commands", "worker_setup_commands")
    commands = [c for key in keys for c in config[key]]
    commands += config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for command in commands:
        check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, check=False)
        assert check.returncode == 0, f"{command!r}: {check.stderr}"


# --- KubeRay ----------------------------------------------------------------------------------------


@functools.cache
def _load_crd_schema(kind: str) -> dict[str, Any]:
    # The CRDs are ~1 MB each: the C loader (when PyYAML has it) and one parse per kind.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY_CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def crd_schema(kind: str) -> dict[str, Any]:
    if not KUBERAY_CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY_CRDS} (the shared folder beside the repo)")
    return _load_crd_schema(kind)


def unknown_fields(doc: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys the schema does not declare: the API server prunes them silently, so a typo would be lost."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(doc, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        found: list[str] = []
        for key, value in doc.items():
            if props is not None and key in props:
                found += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None or extra is False:
                found.append(f"{path}.{key}")
        return found
    if isinstance(doc, list) and isinstance(schema.get("items"), dict):
        return [f for i, item in enumerate(doc) for f in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def ray_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = [(p.name, d) for p in KUBERAY_YAMLS for d in yaml.safe_load_all(p.read_text()) if d]
    return [(name, d) for name, d in docs if d["apiVersion"].startswith("ray.io/")]


@functools.cache
def _crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _load_crd_schema(kind)
    return jsonschema.validators.validator_for(schema)(schema)


def check_against_crd(manifest: dict[str, Any]) -> None:
    schema = crd_schema(manifest["kind"])
    _crd_validator(manifest["kind"]).validate(manifest)
    assert unknown_fields(manifest, schema) == []


def test_kuberay_manifests_cover_rayservice_and_raycluster() -> None:
    kinds = sorted(d["kind"] for _, d in ray_manifests())
    assert kinds == ["RayCluster", "RayService", "RayService"]


@pytest.mark.parametrize(("name", "manifest"), ray_manifests(), ids=[n for n, _ in ray_manifests()])
def test_kuberay_manifest_matches_crd(name: str, manifest: dict[str, Any]) -> None:
    check_against_crd(manifest)


def test_crd_check_catches_typos_and_wrong_types() -> None:
    _, service = next(m for m in ray_manifests() if m[1]["kind"] == "RayService")
    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(AssertionError, match="rayStartParam"):
        check_against_crd(typo)
    wrong = copy.deepcopy(service)
    wrong["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        check_against_crd(wrong)


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterConfig"] if manifest["kind"] == "RayService" else manifest["spec"]


@pytest.mark.parametrize(("name", "manifest"), ray_manifests(), ids=[n for n, _ in ray_manifests()])
def test_kuberay_gpu_workers_are_pinned_probed_and_drained(name: str, manifest: dict[str, Any]) -> None:
    spec = cluster_spec(manifest)
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        selector = pod["nodeSelector"]
        assert selector in (
            {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
            {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
            {"node.kubernetes.io/instance-type": "p4de.24xlarge"},
        )
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
        if manifest["kind"] == "RayService":
            assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
        assert "drain-node" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert pod["terminationGracePeriodSeconds"] > 150  # longer than the preStop drain


@pytest.mark.parametrize(("name", "manifest"), ray_manifests(), ids=[n for n, _ in ray_manifests()])
def test_kuberay_token_auth(name: str, manifest: dict[str, Any]) -> None:
    """KubeRay's authOptions turn token auth on and inject RAY_AUTH_MODE/RAY_AUTH_TOKEN itself: no
    container may set either (a literal token would be committed, another mode would switch it off)."""
    spec = cluster_spec(manifest)
    assert spec["authOptions"] == {"mode": "token"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
        names = {e["name"] for e in container.get("env", [])}
        assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, (name, container["name"])


def test_raycluster_header_reads_the_token_kuberay_makes() -> None:
    path = CLUSTER / "kuberay" / "raycluster-eks-a100.yaml"
    (manifest,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "RayCluster"]
    text = header(path)
    assert "export RAY_AUTH_MODE=token" in text
    assert f"kubectl get secret {manifest['metadata']['name']} -o jsonpath='{{.data.auth_token}}'" in text


def test_crd_check_catches_a_wrong_auth_mode() -> None:
    _, service = next(m for m in ray_manifests() if m[1]["kind"] == "RayService")
    wrong = copy.deepcopy(service)
    wrong["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "tokens"
    with pytest.raises(jsonschema.ValidationError, match="tokens"):
        check_against_crd(wrong)


def test_network_policy_opens_only_the_serve_port_to_outsiders() -> None:
    policy = yaml.safe_load((CLUSTER / "kuberay" / "networkpolicy.yaml").read_text())
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        sources = rule.get("from", [])
        from_ray_pods = sources and all("podSelector" in s and "namespaceSelector" not in s for s in sources)
        if not from_ray_pods:
            assert ports and not (ports & {6379, 10001}), rule
            if not sources:
                assert ports == {8000}, rule


# The door the stack ships on port 8000 (Ray Serve's HAProxy; benchmarks/results/gpu-h200-run6/).
SHIPPED_DOOR = "RAY_SERVE_ENABLE_HA_PROXY"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_starts_ray_behind_the_shipped_door(path: Path) -> None:
    config = launcher(path)
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert re.search(rf"(^|[;\s]){SHIPPED_DOOR}=1\s+(\w+=\S*\s+)*ray start\b", command), command


@pytest.mark.parametrize(("name", "manifest"), ray_manifests(), ids=[n for n, _ in ray_manifests()])
def test_kuberay_ray_containers_start_behind_the_shipped_door(name: str, manifest: dict[str, Any]) -> None:
    spec = cluster_spec(manifest)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0].get("env", [])}
        assert env.get(SHIPPED_DOOR) == "1", (name, group.get("groupName", "head"))


def test_kuberay_gcs_fault_tolerance_uses_the_shipped_redis() -> None:
    """Every Ray manifest keeps its GCS state in the Redis of redis.yaml, its password from the
    Secret that Redis reads (never a literal), and only Ray pods reach that Redis."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "redis.yaml").read_text()) if d}
    service, deployment, policy = docs["Service"], docs["Deployment"], docs["NetworkPolicy"]
    address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    (env,) = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    for name, manifest in ray_manifests():
        options = cluster_spec(manifest)["gcsFaultToleranceOptions"]
        assert options["redisAddress"] == address, name
        assert options["redisPassword"] == {"valueFrom": env["valueFrom"]}, name
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchExpressions": [{"key": "ray.io/node-type", "operator": "Exists"}]}}]
