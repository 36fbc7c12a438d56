"""Fetches the model directory into MODEL_DIR: the worker pod's init container runs it.

The workers keep the model on an emptyDir of their own, filled by this script before the
worker starts, rather than on a shared volume: a ReadOnlyMany claim stays Pending wherever the
default StorageClass is block storage (most clouds' default), and a pod then never starts.

MODEL_SOURCE (the emotion-stream ConfigMap) is one of:
  hf://ORG/NAME[@REVISION]     a hub model; pin a commit to get the same weights on every start
  https://HOST/model.tar.gz    an archive of the model directory
                               (`tar -czf model.tar.gz -C artifacts/model .`), checked against
                               MODEL_SHA256 when that is set
  file:///PATH/model.tar.gz    the same, from a file the init container has mounted
  /PATH                        a directory, copied (a model baked into the init container's image)

A fetch finished once is not repeated when the pod's containers restart (the emptyDir stays).
Runs on the image's Python alone (urllib, tarfile; huggingface_hub for hub ids).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

DONE = ".fetched"  # written last: a directory without it is from an interrupted fetch
FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]  # a model directory's files, no others


def hub_source(source: str) -> tuple[str, str | None]:
    """``hf://org/name@revision`` -> (``org/name``, ``revision`` or None)."""
    repo, _, revision = source.removeprefix("hf://").partition("@")
    return repo, revision or None


def _unpack(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")  # refuses members outside target, links, devices
    # An archive of the directory itself (model/config.json) rather than of its contents.
    children = list(target.iterdir())
    if not (target / "config.json").exists() and len(children) == 1 and children[0].is_dir():
        for child in list(children[0].iterdir()):
            child.rename(target / child.name)
        children[0].rmdir()


def _download(url: str, into: Path, sha256: str | None) -> Path:
    archive = into / "model.tar"
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if sha256 and digest.hexdigest() != sha256.lower():
        raise SystemExit(f"{url}: sha256 {digest.hexdigest()} is not MODEL_SHA256 {sha256}")
    return archive


def fetch(source: str, target: Path, sha256: str | None = None) -> None:
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlparse(source).scheme
    if scheme == "hf":
        from huggingface_hub import snapshot_download

        repo, revision = hub_source(source)
        snapshot_download(repo, revision=revision, local_dir=target, allow_patterns=FILES)
    elif scheme in ("http", "https", "file"):
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            _unpack(_download(source, Path(scratch), sha256), target)
    elif scheme == "" and Path(source).is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        raise SystemExit(
            f"MODEL_SOURCE={source!r}: use hf://ORG/NAME[@REVISION], an https:// or file:// URL of a "
            ".tar.gz of the model directory, or a directory"
        )
    if not (target / "config.json").is_file():
        raise SystemExit(f"{source}: no config.json in what was fetched; is it a model directory?")


def main() -> None:
    source, target = os.environ["MODEL_SOURCE"], Path(os.environ["MODEL_DIR"])
    if (target / DONE).exists() and (target / DONE).read_text() == source:
        print(f"model from {source} already in {target}", flush=True)
        return
    fetch(source, target, os.environ.get("MODEL_SHA256") or None)
    (target / DONE).write_text(source)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"model from {source} in {target}: {size / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
