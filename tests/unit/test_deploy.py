"""deploy/, checked offline: the Dockerfile linted, compose and the Kubernetes manifests parsed
and schema-checked (Compose's own spec, Kubernetes 1.33 strict schemas, KEDA's CRDs' fields),
and consistent with the worker: real settings, served paths and ports, one consumer group and
topic, secrets only in mounted files."""

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from emotion_stream.worker.cli.usage import env_name
from emotion_stream.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33.0"
SETTINGS = {env_name(WorkerSettings, (name,)) for name in WorkerSettings.model_fields}
SERVED_PATHS = {"/health", "/ready", "/metrics"}
KUSTOMIZATION = "kustomization" + ".yaml"  # in every directory of deploy/k8s
COMPOSE = ROOT / "deploy/docker-compose.yml"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests(directory: Path) -> dict[str, dict]:
    """Every manifest of a kustomization, by kind/name."""
    kustomization = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    found = {}
    for resource in kustomization.get("resources", []):
        target = directory / resource
        if target.is_dir():
            found.update(_manifests(target))
            continue
        for document in _documents(target):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def _environment_names() -> dict[str, set[str]]:
    """EMOTION_* names each deploy file sets (YAML keys and env entries, Dockerfile ENV lines)."""
    found: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.suffix in (".yaml", ".yml"):
            names: set[str] = set()

            def walk(node, names=names) -> None:
                if isinstance(node, dict):
                    for key, value in node.items():
                        if isinstance(key, str) and key.startswith("EMOTION_"):
                            names.add(key)
                        if key == "name" and isinstance(value, str) and value.startswith("EMOTION_"):
                            names.add(value)
                        walk(value)
                elif isinstance(node, list):
                    for item in node:
                        walk(item)

            for document in yaml.safe_load_all(path.read_text()):
                walk(document)
            found[str(path.relative_to(DEPLOY))] = names
        elif path.name.startswith("Dockerfile"):
            found[path.name] = set(re.findall(r"\b(EMOTION_[A-Z0-9_]+)=", path.read_text()))
    return found


def test_every_setting_the_deploy_files_set_is_one_the_worker_reads():
    found = _environment_names()
    files = (COMPOSE, ROOT / "deploy/k8s/base/configmap.yaml", ROOT / "deploy/k8s/gpu/worker-gpu.yaml")
    assert {"Dockerfile", *(str(f.relative_to(DEPLOY)) for f in files)} <= set(found)
    for where, names in found.items():
        unknown = names - SETTINGS
        assert not unknown, f"{where} sets {sorted(unknown)}, which are not worker settings"


def test_the_dockerfile_passes_the_linter_and_copies_only_what_dockerignore_lets_through():
    hadolint = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {s for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M) for s in line.split()[:-1]}
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied == allowed, (copied, allowed)
    assert "requirements-worker.lock" in copied  # pinned
    # The training sources come along (the distribution lists its packages by name), never the
    # training dependencies: the CLI leaves the training commands out where they are missing.
    worker_pins = (ROOT / "requirements-worker.lock").read_text()
    assert not re.search(r"^(datasets|optuna|accelerate|scikit-learn)==", worker_pins, re.M)
    assert re.search(r"^USER 10001", dockerfile, re.M) and "HEALTHCHECK" in dockerfile
    assert "TORCH_INDEX" in dockerfile  # the CUDA image is a build argument away


def test_compose_is_a_valid_compose_file_bound_to_localhost_with_topics_made_first():
    text = COMPOSE.read_text()
    resolved = yaml.safe_load(text)  # merge keys resolved, as Compose does
    PyCompose.from_yaml(yaml.safe_dump(resolved)).to_spec()  # Compose's own schema, strict
    services = resolved["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    for name in ("worker", "aggregator", "dashboard"):
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    env = services["worker"]["environment"]
    script = "\n".join(services["topics"]["command"])
    for variable in (
        "EMOTION_INPUT_TOPIC",
        "EMOTION_OUTPUT_TOPIC",
        "EMOTION_DLQ_TOPIC",
        "EMOTION_AGGREGATES_TOPIC",
    ):
        assert re.search(rf"^create {re.escape(env[variable])} ", script, re.M), variable
    assert "cleanup.policy=compact" in script and "AUTO_CREATE_TOPICS_ENABLE" in text
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["dns_sd_configs"][0]["port"] == 6066
    mounted = {v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert {"./grafana/provisioning", "./grafana/emotion-stream.json"} <= mounted


def _validate(manifest: dict) -> None:
    if manifest["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(manifest, json.loads((ROOT / "tests/schemas/keda-v2.json").read_text()))
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def _merged(base: dict, patch: dict) -> dict:
    """A strategic merge of ``patch`` onto ``base``, as far as the GPU overlay needs it
    (containers and env entries merge by name)."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        elif isinstance(value, list) and key in ("containers", "env") and isinstance(merged.get(key), list):
            by_name = {item["name"]: item for item in merged[key]}
            for item in value:
                by_name[item["name"]] = (
                    _merged(by_name[item["name"]], item) if item["name"] in by_name else item
                )
            merged[key] = list(by_name.values())
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_every_manifest_passes_its_schema(variant):
    manifests = _manifests(K8S / "base")
    if variant == "gpu":
        kustomization = yaml.safe_load((K8S / "gpu" / KUSTOMIZATION).read_text())
        for patch in kustomization["patches"]:
            document = yaml.safe_load((K8S / "gpu" / patch["path"]).read_text())
            key = f"{document['kind']}/{document['metadata']['name']}"
            manifests[key] = _merged(manifests[key], document)
        worker = manifests["Deployment/emotion-stream"]["spec"]["template"]["spec"]
        container = worker["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and worker["nodeSelector"]
        assert {"name": "EMOTION_DEVICE", "value": "cuda"} in container["env"]
        assert container["image"].endswith(":cuda")
    assert {
        "Deployment",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "ScaledObject",
    } <= {key.split("/")[0] for key in manifests}
    for key, manifest in manifests.items():
        try:
            _validate(manifest)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{key}: {exc}")


def test_a_typo_in_a_manifest_fails_the_schema_check():
    worker = copy.deepcopy(_manifests(K8S / "base")["Deployment/emotion-stream"])
    worker["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(worker)
    scaler = copy.deepcopy(_manifests(K8S / "base")["ScaledObject/emotion-stream"])
    scaler["spec"]["maxReplicas"] = 6
    with pytest.raises(jsonschema.ValidationError):
        _validate(scaler)


def test_the_manifests_agree_with_the_worker_and_with_each_other():
    manifests = _manifests(K8S / "base")
    config = manifests["ConfigMap/emotion-stream"]["data"]
    pod = manifests["Deployment/emotion-stream"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config["EMOTION_WEB_PORT"]) and config["EMOTION_WEB_HOST"] == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in SERVED_PATHS and get["port"] in ports, probe
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"  # turns 503 when no progress
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]
    threads = next(e for e in container["env"] if e["name"] == "EMOTION_TORCH_THREADS")["valueFrom"]
    assert threads["resourceFieldRef"]["resource"] == "limits.cpu"

    scaled = manifests["ScaledObject/emotion-stream"]["spec"]
    trigger = scaled["triggers"][0]["metadata"]
    assert scaled["scaleTargetRef"]["name"] == "emotion-stream"
    assert (
        trigger["consumerGroup"] == config["EMOTION_GROUP_ID"]
        and trigger["topic"] == config["EMOTION_INPUT_TOPIC"]
    )
    assert trigger["bootstrapServers"] == config["EMOTION_BROKER"].removeprefix("kafka://")
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert trigger["sasl"] == keda_sasl[config["EMOTION_SASL_MECHANISM"]] and trigger["tls"] == "enable"
    partitions = int(re.search(r"EMOTION_PARTITIONS:-(\d+)", COMPOSE.read_text())[1])
    assert scaled["maxReplicaCount"] == partitions  # no more workers than input partitions
    auth = manifests[f"TriggerAuthentication/{scaled['triggers'][0]['authenticationRef']['name']}"]
    secret = manifests["Secret/emotion-stream-kafka"]
    assert {r["key"] for r in auth["spec"]["secretTargetRef"]} <= set(secret["stringData"])

    budget = manifests["PodDisruptionBudget/emotion-stream"]["spec"]
    assert (
        budget["selector"]["matchLabels"]
        == manifests["Deployment/emotion-stream"]["spec"]["selector"]["matchLabels"]
    )
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]
    assert f"PersistentVolumeClaim/{claim['claimName']}" in manifests and claim["readOnly"]
    aggregator = manifests["Deployment/emotion-stream-aggregator"]["spec"]
    assert aggregator["replicas"] == 1 and aggregator["strategy"]["type"] == "Recreate"


def test_the_kafka_password_comes_from_a_mounted_secret_never_the_config():
    manifests = _manifests(K8S / "base")
    config = manifests["ConfigMap/emotion-stream"]["data"]
    assert not any("PASSWORD" in key for key in config)
    for name in ("Deployment/emotion-stream", "Deployment/emotion-stream-aggregator"):
        pod = manifests[name]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert "EMOTION_SASL_PASSWORD" not in env
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        secret_volume = next(v for v in pod["volumes"] if "secret" in v)
        assert secret_volume["secret"]["secretName"] == "emotion-stream-kafka"
        mount = mounts[secret_volume["name"]]
        assert mount["readOnly"] and env["EMOTION_SASL_PASSWORD_FILE"] == f"{mount['mountPath']}/password"
