"""The deployment files set only settings the worker has, and keep secrets out of plain config."""

import re
from pathlib import Path

import yaml

from worker.cli.usage import env_name
from worker.settings import WorkerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS = {env_name(WorkerSettings, (name,)) for name in WorkerSettings.model_fields}


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
    assert found and all(found.values()), found
    for where, names in found.items():
        unknown = names - SETTINGS
        assert not unknown, f"{where} sets {sorted(unknown)}, which are not worker settings"


def test_the_kubernetes_password_comes_from_a_mounted_secret_not_the_config_map():
    documents = list(yaml.safe_load_all((DEPLOY.parent / "deploy/k8s/worker.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    config = kinds["ConfigMap"]["data"]
    assert not any("PASSWORD" in key for key in config if key != "EMOTION_SASL_PASSWORD_FILE")
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    secret_volume = next(v for v in pod["volumes"] if "secret" in v)
    assert secret_volume["secret"]["secretName"] == kinds["Secret"]["metadata"]["name"]
    mount = mounts[secret_volume["name"]]
    assert mount["readOnly"] and env["EMOTION_SASL_PASSWORD_FILE"].startswith(mount["mountPath"] + "/")
    assert Path(env["EMOTION_SASL_PASSWORD_FILE"]).name in kinds["Secret"]["stringData"]
