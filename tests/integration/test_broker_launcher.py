"""`emotion-stream broker` and `emotion-stream demo --serve` stop what they started.

A supervisor, `kill` or a script stops a process with SIGTERM (or SIGHUP, or SIGINT, which a
background job of a non-interactive shell inherits as ignored), and the launcher itself may
be SIGKILLed: in every case the embedded broker it started must go with it and free its port.
The launcher runs in a session of its own, so only the launcher gets the signal, as from
`kill PID`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from emotion_stream.worker.broker.embedded import api_versions_ok, free_port

pytestmark = pytest.mark.integration

BOUND_S = 10.0  # a stop is a few milliseconds; this only bounds a wait that would hang


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}


def _launch(args: list[str], log: Path, ignore_sigint: bool = False, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "emotion_stream.worker.cli.main", *args]
    if ignore_sigint:
        # What a non-interactive shell does to a background job: SIGINT ignored, kept across exec.
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=kwargs.pop("env", _env()),
        **kwargs,
    )


def _wait_for(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the launcher exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"no {what} within {timeout:.0f}s:\n{log.read_text()}")


def _tansu_children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "tansu"]


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # exited; its parent has not reaped it yet
    except psutil.NoSuchProcess:
        return True


def _port_free(port: int) -> bool:
    """True when a new server could listen on ``port`` (as servers do, past TIME_WAIT sockets)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _assert_all_gone(processes: list[psutil.Process], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if all(_gone(p) for p in processes) and all(_port_free(port) for port in ports):
            return
        time.sleep(0.05)
    alive = [f"{p.pid} {p.name()}" for p in processes if not _gone(p)]
    for p in processes:  # do not leave them to the next test
        if not _gone(p):
            p.kill()
    pytest.fail(f"still running {BOUND_S:.0f}s after the launcher stopped: {alive}\n{log.read_text()}")


@pytest.mark.parametrize(
    ("sig", "ignore_sigint"),
    [
        (signal.SIGTERM, False),
        (signal.SIGHUP, False),
        (signal.SIGINT, False),
        (signal.SIGINT, True),
        (signal.SIGTERM, True),
        (signal.SIGKILL, False),
    ],
    ids=["SIGTERM", "SIGHUP", "SIGINT", "SIGINT-inherited-ignored", "SIGTERM-SIGINT-ignored", "SIGKILL"],
)
def test_a_signalled_launcher_takes_its_broker_with_it(sig, ignore_sigint, tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    proc = _launch(["broker", "--port", str(port)], log, ignore_sigint=ignore_sigint)
    try:
        _wait_for(lambda: "to stop" in log.read_text(), "the launcher's ready line", proc, log)
        assert api_versions_ok("127.0.0.1", port)
        brokers = _tansu_children(proc.pid)
        assert len(brokers) == 1, brokers
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=BOUND_S)
        _assert_all_gone(brokers, [port], log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig != signal.SIGKILL:
        assert code == 0, log.read_text()  # a requested stop is a clean one
        assert "stopped" in log.read_text()


def _advertised(bootstrap: str) -> list[tuple[str, int]]:
    """The brokers the cluster metadata names, as a Kafka client sees them after bootstrapping."""
    from aiokafka.client import AIOKafkaClient

    async def run() -> list[tuple[str, int]]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            return [(b.host, b.port) for b in client.cluster.brokers()]
        finally:
            await client.close()

    return asyncio.run(run())


def test_the_broker_listens_on_the_given_host_and_advertises_the_given_address(tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    proc = _launch(
        ["broker", "--host", "0.0.0.0", "--port", str(port), "--advertise", "broker.example.test:19092"],
        log,
    )
    try:
        _wait_for(lambda: api_versions_ok("127.0.0.1", port), "broker answering", proc, log)
        (broker,) = _tansu_children(proc.pid)
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in broker.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert ("0.0.0.0", port) in listening, listening
        assert _advertised(f"127.0.0.1:{port}") == [("broker.example.test", 19092)]
        assert "EMOTION_BROKER=kafka://broker.example.test:19092" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=BOUND_S)


def test_the_advertised_port_defaults_to_the_listening_one(tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    proc = _launch(["broker", "--port", str(port), "--advertise", "localhost"], log)
    try:
        _wait_for(lambda: api_versions_ok("127.0.0.1", port), "broker answering", proc, log)
        assert _advertised(f"127.0.0.1:{port}") == [("localhost", port)]
    finally:
        proc.terminate()
        proc.wait(timeout=BOUND_S)


def test_an_advertised_address_without_a_valid_port_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_stream.worker.cli.main",
            "broker",
            "--port",
            "0",
            "--advertise",
            "host:http",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--advertise" in proc.stderr, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_demo_server_takes_all_its_processes_with_it(sig, tiny_model, tmp_path):
    """The demo starts the broker, a worker, the aggregator and the page; none outlives it."""
    env = {**_env(), "EMOTION_MODEL": str(tiny_model), "EMOTION_TORCH_THREADS": "1"}
    log = tmp_path / "demo.log"
    proc = _launch(["demo", "--serve", "--timeout", "120"], log, env=env, cwd=tmp_path)
    try:
        _wait_for(lambda: "serving the live page" in log.read_text(), "page served", proc, log, timeout=240)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert {"tansu"} <= {c.name() for c in children} and len(children) >= 4, children
        ports = [
            c.laddr.port
            for child in children
            for c in child.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
        _assert_all_gone(children, ports, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:
        assert code == 0, log.read_text()
        # once in the summary before serving, once after the worker's own graceful stop
        assert log.read_text().count("worker exit code 0") == 2, log.read_text()
