"""deploy/, checked offline: the Dockerfile linted, compose and the Kubernetes manifests parsed
and schema-checked (Compose's own spec, Kubernetes 1.33 strict schemas, the fields of the KEDA,
Strimzi and Prometheus Operator CRDs used), and consistent with the worker: real settings,
served paths and ports, one consumer group and topic, secrets only in mounted files.

The manifests are checked as `kubectl kustomize` renders them (generators, components and
patches applied by kustomize itself), for every variant a user applies."""

import copy
import io
import json
import re
import shutil
import subprocess
import tarfile
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from emotion_stream.worker.cli.usage import env_name
from emotion_stream.worker.observability import WorkerMetrics
from emotion_stream.worker.settings import AggregatorSettings, DashboardSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = ROOT / "tests/schemas"
KUBERNETES_VERSION = "1.33.0"
SETTINGS = {
    env_name(section, (name,))
    for section in (WorkerSettings, AggregatorSettings, DashboardSettings)
    for name in section.model_fields
}
SERVED_PATHS = {"/health", "/ready", "/metrics"}
KUSTOMIZATION = "kustomization" + ".yaml"  # in every directory of deploy/k8s
COMPOSE = ROOT / "deploy/docker-compose.yml"
DOCS = ROOT / "docs/deploying.md"
KUBECTL = shutil.which("kubectl")
CREDENTIAL_FILES = ("username", "password", "ca.crt")  # what the credentials component reads
WORKER, AGGREGATOR, DASHBOARD = "emotion-stream", "emotion-stream-aggregator", "emotion-stream-dashboard"
KAFKA_CLIENTS = (WORKER, AGGREGATOR, DASHBOARD)

needs_kustomize = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: the manifests are checked as `kubectl kustomize` renders them",
)


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _environment_names() -> dict[str, set[str]]:
    """EMOTION_* names each deploy file sets (YAML keys and env entries, env files, Dockerfile ENV)."""
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
                elif isinstance(node, str):  # a generator's literals: NAME=value
                    names.update(re.findall(r"^(EMOTION_[A-Z0-9_]+)=", node))

            for document in yaml.safe_load_all(path.read_text()):
                walk(document)
            found[str(path.relative_to(DEPLOY))] = names
        elif path.suffix == ".env":
            names = set(re.findall(r"^(EMOTION_[A-Z0-9_]+)=", path.read_text(), re.M))
            found[str(path.relative_to(DEPLOY))] = names
        elif path.name.startswith("Dockerfile"):
            found[path.name] = set(re.findall(r"\b(EMOTION_[A-Z0-9_]+)=", path.read_text()))
    return found


# --- rendering ---------------------------------------------------------------------------------


def _kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _with_credentials(tmp: Path) -> Path:
    """A copy of deploy/k8s with placeholder credential files and an overlay that uses them,
    as a user of the credentials component has it (the real files are git-ignored)."""
    shutil.copytree(K8S, tmp / "k8s")
    component = tmp / "k8s/components/kafka-credentials"
    for name in CREDENTIAL_FILES:
        (component / name).write_text(f"test-{name}\n")
    overlay = tmp / "k8s/with-credentials"
    overlay.mkdir()
    (overlay / KUSTOMIZATION).write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../base"],
                "components": ["../components/kafka-credentials"],
            }
        )
    )
    return overlay


VARIANTS = ("base", "gpu", "strimzi", "credentials")


@cache
def _rendered(variant: str) -> tuple[dict, ...]:
    if variant == "credentials":
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="emotion-k8s-"))
        return tuple(_kustomize(_with_credentials(tmp)))
    return tuple(_kustomize(K8S / variant))


def _render(variant: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(variant)))


HASH = "[bcdfghjklmnpqrstvwxz2456789]{10}"  # kustomize's suffix: no vowels, so never a word


def _one(manifests: list[dict], kind: str, name: str) -> dict:
    """The manifest of ``kind`` named ``name`` (or, for a generated one, ``name-<hash>``)."""
    found = [
        m
        for m in manifests
        if m["kind"] == kind and re.fullmatch(rf"{re.escape(name)}(-{HASH})?", m["metadata"]["name"])
    ]
    assert len(found) == 1, (kind, name, [m["metadata"]["name"] for m in manifests if m["kind"] == kind])
    return found[0]


def _pod(manifests: list[dict], name: str) -> dict:
    return _one(manifests, "Deployment", name)["spec"]["template"]["spec"]


def _container(pod: dict, name: str | None = None) -> dict:
    return next(c for c in pod["containers"] if name is None or c["name"] == name)


def _config(manifests: list[dict]) -> dict[str, str]:
    return _one(manifests, "ConfigMap", "emotion-stream")["data"]


def _env(manifests: list[dict], pod: dict, container: dict) -> dict[str, str | None]:
    """A container's environment as the pod gets it: envFrom ConfigMaps, then env entries."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        config = next(m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name)
        env.update(config["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def _mounted_files(pod: dict, container: dict) -> dict[str, tuple[str, str]]:
    """Each file a container gets from a Secret: its path -> (secret name, key)."""
    files = {}
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    for volume in pod.get("volumes", []):
        if volume["name"] not in mounts:
            continue
        sources = []
        if "secret" in volume:
            sources.append(volume["secret"] | {"name": volume["secret"]["secretName"]})
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                sources.append(source["secret"])
        for source in sources:
            for item in source.get("items", []):
                files[f"{mounts[volume['name']]}/{item['path']}"] = (source["name"], item["key"])
    return files


# --- schemas -----------------------------------------------------------------------------------

CRD_SCHEMAS = {
    "keda.sh/": "keda-v2.json",
    "kafka.strimzi.io/": "strimzi-v1beta2.json",
    "monitoring.coreos.com/": "prometheus-operator-v1.json",
}


def _validate(manifest: dict) -> None:
    for prefix, schema in CRD_SCHEMAS.items():
        if manifest["apiVersion"].startswith(prefix):
            jsonschema.validate(manifest, json.loads((SCHEMAS / schema).read_text()))
            return
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# --- the files ---------------------------------------------------------------------------------


def test_every_setting_the_deploy_files_set_is_one_a_program_reads():
    found = _environment_names()
    files = (COMPOSE, K8S / "base/settings.env", ROOT / "deploy/k8s/gpu/worker-gpu.yaml")
    assert {"Dockerfile", *(str(f.relative_to(DEPLOY)) for f in files)} <= set(found)
    for where, names in found.items():
        unknown = names - SETTINGS
        assert not unknown, f"{where} sets {sorted(unknown)}, which no program reads"


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


def test_the_image_has_a_writable_home_and_leaves_torch_threads_to_the_worker():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+)", dockerfile.split("FROM ${PYTHON_IMAGE}\n")[-1]))
    # The user is created without a home directory and the root filesystem is read-only in
    # every deployment: HOME and the hub's cache must be under /tmp, a writable mount.
    assert env["HOME"].startswith("/tmp") and env["HF_HOME"].startswith("/tmp")
    assert "EMOTION_TORCH_THREADS=" not in dockerfile  # sized from the CPU quota by the worker


def _compose() -> dict:
    resolved = yaml.safe_load(COMPOSE.read_text())  # merge keys resolved, as Compose does
    PyCompose.from_yaml(yaml.safe_dump(resolved)).to_spec()  # Compose's own schema, strict
    return resolved


def test_compose_is_a_valid_compose_file_bound_to_localhost_with_topics_made_first():
    text = COMPOSE.read_text()
    resolved = _compose()
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
    mounted = {v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert {"./grafana/provisioning", "./grafana/emotion-stream.json"} <= mounted


def test_compose_scales_the_worker_and_checks_each_service_on_its_own_port():
    services = _compose()["services"]
    # `--scale worker=3` needs no fixed host port: each replica gets its own (or none).
    for port in services["worker"].get("ports", []):
        host = str(port).split(":")
        assert len(host) == 3 and host[1] == "", f"the worker publishes a fixed host port: {port}"
    assert "EMOTION_TORCH_THREADS" not in services["worker"]["environment"]  # `cpus` sets the quota
    # `docker compose up --wait` waits on each health check: each asks its own service's port.
    for name, variable in (("aggregator", "EMOTION_AGGREGATE_PORT"), ("dashboard", "EMOTION_DASHBOARD_PORT")):
        check = " ".join(services[name]["healthcheck"]["test"])
        port = services[name]["environment"][variable]
        assert f"127.0.0.1:{port}/health" in check, (name, check)


def test_prometheus_scrapes_the_workers_the_aggregator_the_page_and_the_lag_exporter():
    services = _compose()["services"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    targets = {}
    for name, job in jobs.items():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            targets[name] = (sd["names"][0], sd["port"])
        for static in job.get("static_configs", []):
            host, port = static["targets"][0].rsplit(":", 1)
            targets[name] = (host, int(port))
    assert targets[WORKER] == ("worker", 6066)
    port = {name: services[name]["environment"] for name in ("aggregator", "dashboard")}
    assert targets[AGGREGATOR] == ("aggregator", int(port["aggregator"]["EMOTION_AGGREGATE_PORT"]))
    assert targets[DASHBOARD] == ("dashboard", int(port["dashboard"]["EMOTION_DASHBOARD_PORT"]))
    exporter = next(name for name, (host, _) in targets.items() if host == "kafka-exporter")
    assert "kafka-exporter" in services and exporter


# --- Kubernetes --------------------------------------------------------------------------------


@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_passes_its_schema(variant):
    manifests = _render(variant)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "ConfigMap", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"} <= (
        kinds
    )
    for manifest in manifests:
        try:
            _validate(manifest)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc}")
    if variant == "gpu":
        pod = _pod(manifests, WORKER)
        container = _container(pod, "worker")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["nodeSelector"]
        assert {"name": "EMOTION_DEVICE", "value": "cuda"} in container["env"]
        assert container["image"].endswith(":cuda")


@needs_kustomize
def test_a_typo_in_a_manifest_fails_the_schema_check():
    manifests = _render("strimzi")
    worker = _one(manifests, "Deployment", WORKER)
    worker["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(worker)
    for kind, name, field in (
        ("ScaledObject", WORKER, "maxReplicas"),
        ("KafkaUser", WORKER, "acl"),
        ("PrometheusRule", WORKER, "group"),
        ("PodMonitor", WORKER, "endpoint"),
    ):
        manifest = _one(manifests, kind, name)
        manifest["spec"][field] = 6
        with pytest.raises(jsonschema.ValidationError):
            _validate(manifest)


@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_manifests_agree_with_the_worker_and_with_each_other(variant):
    manifests = _render(variant)
    config = _config(manifests)
    WorkerSettings.model_validate(
        {k.removeprefix("EMOTION_").lower(): v for k, v in config.items() if k.startswith("EMOTION_")}
        | {"ssl_ca_file": None, "sasl_password_file": __file__, "model": "keywords:"}  # pod-only files
    )
    pod = _pod(manifests, WORKER)
    container = _container(pod, "worker")
    env = _env(manifests, pod, container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["EMOTION_WEB_PORT"]) and env["EMOTION_WEB_HOST"] == "0.0.0.0"
    for name, port_setting in ((AGGREGATOR, "EMOTION_AGGREGATE_PORT"), (DASHBOARD, "EMOTION_DASHBOARD_PORT")):
        other = _container(_pod(manifests, name))
        env = _env(manifests, _pod(manifests, name), other)
        assert {p["name"]: p["containerPort"] for p in other["ports"]}["http"] == int(env[port_setting]), name
        assert env[port_setting.replace("_PORT", "_HOST")] == "0.0.0.0", name
    for name in KAFKA_CLIENTS:
        for c in _pod(manifests, name)["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    get = c[probe]["httpGet"]
                    assert get["path"] in SERVED_PATHS and get["port"] == "http", (name, probe)
            assert c["livenessProbe"]["httpGet"]["path"] == "/health"  # turns 503 when no progress
            assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
            assert security["capabilities"]["drop"] == ["ALL"]
        assert _pod(manifests, name)["securityContext"]["runAsNonRoot"]

    scaled = _one(manifests, "ScaledObject", WORKER)["spec"]
    trigger = scaled["triggers"][0]["metadata"]
    assert scaled["scaleTargetRef"]["name"] == WORKER
    assert (
        trigger["consumerGroup"] == config["EMOTION_GROUP_ID"]
        and trigger["topic"] == config["EMOTION_INPUT_TOPIC"]
    )
    assert trigger["bootstrapServers"] == config["EMOTION_BROKER"].removeprefix("kafka://")
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert trigger["sasl"] == keda_sasl[config["EMOTION_SASL_MECHANISM"]] and trigger["tls"] == "enable"
    auth = _one(manifests, "TriggerAuthentication", scaled["triggers"][0]["authenticationRef"]["name"])
    assert auth["metadata"]["name"] == scaled["triggers"][0]["authenticationRef"]["name"]

    budget = _one(manifests, "PodDisruptionBudget", WORKER)["spec"]
    selector = _one(manifests, "Deployment", WORKER)["spec"]["selector"]
    assert budget["selector"]["matchLabels"] == selector["matchLabels"]
    for name in (AGGREGATOR, DASHBOARD):  # one each: two aggregators would publish conflicting counts
        spec = _one(manifests, "Deployment", name)["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", name


# Defect 1: the password was a committed placeholder, written over the real one on every apply.
@needs_kustomize
@pytest.mark.parametrize("variant", ("base", "gpu", "strimzi"))
def test_no_variant_applies_a_kafka_secret_of_its_own(variant):
    for manifest in _render(variant):
        if manifest["kind"] == "Secret":
            data = manifest.get("stringData", {}) | manifest.get("data", {})
            assert set(data) <= {"username"}, f"{variant} applies a Secret with {sorted(data)}"
    for path in K8S.rglob("*.yaml"):
        for document in _documents(path):
            assert document.get("kind") != "Secret", f"{path} commits a Secret"


@needs_kustomize
def test_the_credentials_come_from_files_git_ignores_and_reach_every_reader():
    component = K8S / "components/kafka-credentials"
    paths = [str((component / name).relative_to(ROOT)) for name in CREDENTIAL_FILES]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert set(ignored.stdout.split()) == set(paths), "the credential files are not all git-ignored"
    manifests = _render("credentials")
    secret = _one(manifests, "Secret", "emotion-stream-kafka")
    assert secret["metadata"]["name"] != "emotion-stream-kafka"  # hashed: a new password rolls the pods
    assert set(secret["data"]) == {"username", "password", "ca.crt"}
    auth = _one(manifests, "TriggerAuthentication", "emotion-stream-kafka")["spec"]["secretTargetRef"]
    assert {(r["parameter"], r["key"]) for r in auth} == {
        ("username", "username"),
        ("password", "password"),
        ("ca", "ca.crt"),
    }
    assert {r["name"] for r in auth} == {secret["metadata"]["name"]}
    for name in KAFKA_CLIENTS:
        pod = _pod(manifests, name)
        files = _mounted_files(pod, _container(pod))
        assert {v[0] for v in files.values()} == {secret["metadata"]["name"]}, name


def test_the_docs_say_how_to_create_the_secret_with_every_key():
    docs = DOCS.read_text()
    command = re.search(r"kubectl create secret generic emotion-stream-kafka[^`]*?(?=\n\s*```)", docs, re.S)
    assert command, "docs/deploying.md shows no `kubectl create secret generic emotion-stream-kafka`"
    for key in ("username", "password", "ca.crt"):
        assert f"--from-file={key}=" in command[0] or f"--from-literal={key}=" in command[0], key
    for name in CREDENTIAL_FILES:
        assert f"components/kafka-credentials/{name}" in docs, name


@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kafka_password_comes_from_a_mounted_secret_never_the_config(variant):
    manifests = _render(variant)
    config = _config(manifests)
    assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in config)
    for name in KAFKA_CLIENTS:
        pod = _pod(manifests, name)
        container = _container(pod)
        env = _env(manifests, pod, container)
        assert "EMOTION_SASL_PASSWORD" not in env
        files = _mounted_files(pod, container)
        assert files[env["EMOTION_SASL_PASSWORD_FILE"]][1] == "password", name
        for mount in container["volumeMounts"]:
            if env["EMOTION_SASL_PASSWORD_FILE"].startswith(mount["mountPath"] + "/"):
                assert mount["readOnly"]


# Defect 2: the Deployment set replicas while KEDA owns the count (every apply reset it).
@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_keda_alone_sets_the_worker_count(variant):
    assert "replicas" not in _one(_render(variant), "Deployment", WORKER)["spec"]


# Defect 3: a ReadOnlyMany claim from the default StorageClass stays Pending on block storage.
@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_model_needs_no_shared_volume(variant):
    manifests = _render(variant)
    for claim in (m for m in manifests if m["kind"] == "PersistentVolumeClaim"):
        assert set(claim["spec"]["accessModes"]) <= {"ReadWriteOnce", "ReadWriteOncePod"}, claim
    pod = _pod(manifests, WORKER)
    config = _config(manifests)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = _container(pod, "worker")["volumeMounts"]
    model_mount = next(m for m in mounts if m["mountPath"] == config["EMOTION_MODEL"])
    assert model_mount["readOnly"]
    model_volume = volumes[model_mount["name"]]
    assert model_volume["emptyDir"]["sizeLimit"]
    (fetch,) = pod["initContainers"]
    fetched_into = next(m["mountPath"] for m in fetch["volumeMounts"] if m["name"] == model_mount["name"])
    env = _env(manifests, pod, fetch)
    assert env["MODEL_SOURCE"] and env["MODEL_DIR"] == fetched_into
    script = next(m["mountPath"] for m in fetch["volumeMounts"] if "configMap" in volumes[m["name"]])
    assert fetch["command"][-1].startswith(script + "/")
    assert fetch["securityContext"]["readOnlyRootFilesystem"]


def _fetch_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_model", ROOT / "deploy/k8s/base/fetch-model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fetch_script_unpacks_an_archive_copies_a_directory_and_refuses_escapes(tmp_path):
    fetch = _fetch_model()
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in (("model/config.json", b"{}"), ("model/model.safetensors", b"weights")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    fetch.fetch(archive.as_uri(), tmp_path / "a")
    assert (tmp_path / "a/config.json").read_text() == "{}" and (tmp_path / "a/model.safetensors").exists()
    fetch.fetch(str(tmp_path / "a"), tmp_path / "b")  # a directory (from an image, a mounted volume)
    assert (tmp_path / "b/model.safetensors").read_bytes() == b"weights"
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):  # tarfile's "data" filter: nothing outside the target
        fetch.fetch(evil.as_uri(), tmp_path / "c")
    assert not (tmp_path / "outside").exists()
    assert fetch.hub_source("hf://org/model@abc123") == ("org/model", "abc123")
    assert fetch.hub_source("hf://org/model") == ("org/model", None)
    with pytest.raises(SystemExit):
        fetch.fetch("ftp://nowhere/model", tmp_path / "d")


# Defect 4: SASL_SSL against a private CA: no CA file in the worker nor in KEDA's trigger.
@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_tls_trusts_the_clusters_ca_in_the_clients_and_in_keda(variant):
    manifests = _render(variant)
    config = _config(manifests)
    assert config["EMOTION_SECURITY_PROTOCOL"] == "SASL_SSL"
    for name in KAFKA_CLIENTS:
        pod = _pod(manifests, name)
        container = _container(pod)
        env = _env(manifests, pod, container)
        assert _mounted_files(pod, container)[env["EMOTION_SSL_CA_FILE"]][1] == "ca.crt", name
    auth = _one(manifests, "TriggerAuthentication", "emotion-stream-kafka")["spec"]["secretTargetRef"]
    ca = next(r for r in auth if r["parameter"] == "ca")
    worker = _pod(manifests, WORKER)
    files = _mounted_files(worker, _container(worker))
    assert files[config["EMOTION_SSL_CA_FILE"]] == (ca["name"], ca["key"])
    assert {r["parameter"] for r in auth} == {"username", "password", "ca"}


# Defect 5: a drain stalls on workers that are unready because the broker is away.
@needs_kustomize
def test_the_disruption_budget_lets_unready_workers_be_evicted():
    budget = _one(_render("base"), "PodDisruptionBudget", WORKER)["spec"]
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow" and budget["maxUnavailable"] == 1


# Defect 6: torch threads from limits.cpu (rounded up, and the whole node's without a limit),
# HF_HOME on a 256 MiB emptyDir, HOME under the read-only root.
@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_threads_follow_the_cpu_quota_and_caches_have_room(variant):
    manifests = _render(variant)
    for name in KAFKA_CLIENTS:
        pod = _pod(manifests, name)
        container = _container(pod)
        env = _env(manifests, pod, container)
        assert "EMOTION_TORCH_THREADS" not in env, name  # the worker reads its cgroup's quota
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for variable in ("HOME", "HF_HOME"):
            mount = next((p for p in mounts if env[variable] == p or env[variable].startswith(p + "/")), None)
            assert mount, f"{name}: {variable}={env[variable]} is on the read-only root"
            assert "emptyDir" in volumes[mounts[mount]], (name, variable)
        if name == WORKER:
            cache = volumes[mounts[next(p for p in mounts if env["HF_HOME"].startswith(p))]]
            assert _quantity(cache["emptyDir"]["sizeLimit"]) >= 1 << 30  # a hub model fits


def _quantity(text: str) -> float:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1)


# Defect 8: the GPU overlay kept the CPU worker's lag threshold and named no driver.
@needs_kustomize
def test_the_gpu_overlay_scales_for_gpu_throughput_and_says_what_the_nodes_need():
    cpu = _one(_render("base"), "ScaledObject", WORKER)["spec"]["triggers"][0]["metadata"]
    gpu = _one(_render("gpu"), "ScaledObject", WORKER)["spec"]["triggers"][0]["metadata"]
    assert int(gpu["lagThreshold"]) >= 3 * int(cpu["lagThreshold"])
    assert _pod(_render("gpu"), WORKER)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    docs = DOCS.read_text()
    assert "GPU Feature Discovery" in docs and "GPU Operator" in docs
    assert re.search(r"driver (version )?\d{3}", docs)


# Defect 9: only the workers were scraped; nothing alerted; the page and aggregator unwatched.
@needs_kustomize
def test_the_aggregator_and_the_page_are_scraped_in_every_variant():
    for variant in VARIANTS:
        manifests = _render(variant)
        for name in KAFKA_CLIENTS:
            template = _one(manifests, "Deployment", name)["spec"]["template"]
            annotations = template["metadata"]["annotations"]
            port = _container(template["spec"])["ports"][0]["containerPort"]
            assert annotations["prometheus.io/port"] == str(port), (variant, name)
    monitor = _one(_render("strimzi"), "PodMonitor", WORKER)["spec"]
    selected = set(monitor["selector"]["matchExpressions"][0]["values"])
    assert selected == set(KAFKA_CLIENTS)
    assert monitor["podMetricsEndpoints"][0]["port"] == "http"
    assert monitor["jobLabel"] == "app.kubernetes.io/name"  # job = the compose file's job names


KNOWN_METRICS = {"kafka_consumergroup_lag", "up"}  # kafka-exporter's, Prometheus's own


@needs_kustomize
def test_the_alerts_cover_the_failures_and_query_real_metrics():
    rule = _one(_render("strimzi"), "PrometheusRule", WORKER)
    exported = {family.name for family in WorkerMetrics().registry.collect()}
    series = {n + s for n in exported for s in ("", "_total", "_bucket", "_sum", "_count")}
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {
        "EmotionStreamLagGrowing",
        "EmotionStreamNoProgress",
        "EmotionStreamDeadLetters",
        "EmotionStreamWorkersUnready",
        "EmotionStreamModelMemoryHigh",
    } <= set(alerts)
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"], name
        names = set(re.findall(r"\b(emotion_[a-z0-9_]+|kafka_[a-z0-9_]+|up)\b(?=\s*[{\[)])", alert["expr"]))
        assert names and names <= series | KNOWN_METRICS, (name, names - series)
        assert alert["expr"].count("(") == alert["expr"].count(")"), name
    assert "emotion_model_process_resident_memory_bytes" in alerts["EmotionStreamModelMemoryHigh"]["expr"]
    assert "kafka_consumergroup_lag" in alerts["EmotionStreamLagGrowing"]["expr"]


def _topics(manifests: list[dict]) -> dict[str, dict]:
    """Strimzi's KafkaTopics by the topic's name."""
    return {
        m["spec"].get("topicName", m["metadata"]["name"]): m for m in manifests if m["kind"] == "KafkaTopic"
    }


# Defect 10: edits to the ConfigMap rolled nothing; cooldownPeriod did nothing at minReplicaCount
# 1; 4 or 5 workers split 6 partitions unevenly.
@needs_kustomize
@pytest.mark.parametrize("variant", VARIANTS)
def test_settings_are_generated_and_the_scaler_scales_sensibly(variant):
    manifests = _render(variant)
    config = _one(manifests, "ConfigMap", "emotion-stream")
    assert config["metadata"]["name"] != "emotion-stream"  # hashed: an edit rolls the pods
    for name in KAFKA_CLIENTS:
        refs = {s["configMapRef"]["name"] for s in _container(_pod(manifests, name))["envFrom"]}
        assert refs == {config["metadata"]["name"]}, name
    scaled = _one(manifests, "ScaledObject", WORKER)["spec"]
    assert scaled["minReplicaCount"] >= 1 and "cooldownPeriod" not in scaled  # only acts on scaling to 0
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    # A worker removed and added back reloads its model (the startup probe allows 5 minutes):
    # scale-down waits longer than that and removes one worker at a time.
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    partitions = int(re.search(r"EMOTION_PARTITIONS:-(\d+)", COMPOSE.read_text())[1])
    for replicas in range(1, scaled["maxReplicaCount"] + 1):  # whatever count the HPA picks
        assert partitions % replicas == 0, f"{replicas} workers split {partitions} partitions unevenly"
    if variant == "strimzi":
        topics = _topics(manifests)
        assert topics[config["data"]["EMOTION_INPUT_TOPIC"]]["spec"]["partitions"] == partitions


@needs_kustomize
def test_the_strimzi_component_grants_each_client_what_it_uses():
    manifests = _render("strimzi")
    config = _config(manifests)
    user = _one(manifests, "KafkaUser", WORKER)
    assert user["metadata"]["name"] == config["EMOTION_SASL_USERNAME"]
    assert user["spec"]["authentication"]["type"] == config["EMOTION_SASL_MECHANISM"].lower()
    cluster = user["metadata"]["labels"]["strimzi.io/cluster"]
    granted = {
        (acl["resource"]["type"], acl["resource"]["name"], op)
        for acl in user["spec"]["authorization"]["acls"]
        for op in acl["operations"]
    }
    topic = {k: config[f"EMOTION_{k}_TOPIC"] for k in ("INPUT", "OUTPUT", "DLQ", "AGGREGATES")}
    needed = {
        ("group", config["EMOTION_GROUP_ID"], "Read"),  # the workers (and KEDA reading the lag)
        ("topic", topic["INPUT"], "Read"),
        ("topic", topic["OUTPUT"], "Write"),
        ("topic", topic["DLQ"], "Write"),
        ("group", config.get("EMOTION_AGGREGATE_GROUP_ID", "emotion-stream-aggregate"), "Read"),
        ("topic", topic["OUTPUT"], "Read"),  # the aggregator and the page
        ("topic", topic["DLQ"], "Read"),
        ("topic", topic["AGGREGATES"], "Read"),
        ("topic", topic["AGGREGATES"], "Write"),
    }
    assert needed <= granted, needed - granted
    topics = _topics(manifests)
    assert set(topic.values()) <= set(topics)
    assert topics[topic["AGGREGATES"]]["spec"]["config"]["cleanup.policy"] == "compact"
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == cluster for t in topics.values())
    # The user operator's secret has the password; the cluster CA's secret the CA.
    refs = _one(manifests, "TriggerAuthentication", "emotion-stream-kafka")["spec"]["secretTargetRef"]
    auth = {r["parameter"]: r for r in refs}
    assert (auth["password"]["name"], auth["password"]["key"]) == (user["metadata"]["name"], "password")
    assert (auth["ca"]["name"], auth["ca"]["key"]) == (f"{cluster}-cluster-ca-cert", "ca.crt")
    username = _one(manifests, "Secret", auth["username"]["name"].rsplit("-", 1)[0])
    assert username["metadata"]["name"] == auth["username"]["name"]
    bootstrap = f"{cluster}-kafka-bootstrap"
    assert config["EMOTION_BROKER"].startswith(f"kafka://{bootstrap}")


def test_the_container_runs_the_tag_the_docs_build_and_waits_with_testcontainers(monkeypatch):
    """The default image is one the docs build (and compose and the manifests run), and start()
    waits for /ready through testcontainers' own HTTP wait strategy, not a loop of its own."""
    import testcontainers.core.container as tc
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    from emotion_stream.worker.containers import EmotionStreamContainer

    monkeypatch.setattr(tc, "DockerClient", lambda **_: None)  # no Docker engine needed to build it
    container = EmotionStreamContainer("kafka:9092", ready_timeout=30)
    built = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.", DOCS.read_text())[1]
    assert container.image.endswith(built) and built == "emotion-stream:cpu"
    assert _compose()["services"]["worker"]["image"] == built
    strategy = container._wait_strategy  # testcontainers keeps no public accessor for it
    assert isinstance(strategy, HttpWaitStrategy) and strategy._path == "/ready" and strategy._port == 6066
    assert container.settings["EMOTION_BROKER"] == "kafka://kafka:9092"
