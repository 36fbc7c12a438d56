"""Runs `emotion-stream worker` as a child process, configured by ``EMOTION_*`` variables.

The demo runs its worker this way, so it stays with the commands; the integration tests and
the benchmarks drive their workers through the same class, so what they measure and check
is the worker exactly as the demo and a supervisor start it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from emotion_stream.worker.broker.embedded import free_port


def emotion_stream_command(*args: str) -> list[str]:
    """The command line of ``emotion-stream ARGS``: the console script installed beside this
    Python, else the module run with the working directory kept off the import path (a
    project's own ``worker`` or ``schemas`` package must never be picked up instead)."""
    script = Path(sys.executable).with_name("emotion-stream")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    found = shutil.which("emotion-stream")
    if found:
        return [found, *args]
    safe = ["-P"] if sys.version_info >= (3, 11) else ["-I"]
    return [sys.executable, *safe, "-m", "emotion_stream.worker.cli.main", *args]


class WorkerProcess:
    """A worker in a child process, configured by ``EMOTION_*`` variables."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path | None = None, command: Sequence[str] | None = None
    ) -> None:
        self.command = list(command or emotion_stream_command("worker"))
        self.web_port = int(env.get("EMOTION_WEB_PORT") or free_port())
        self.env = {
            **os.environ,
            **env,
            "EMOTION_WEB_PORT": str(self.web_port),
            "EMOTION_WEB_HOST": "127.0.0.1",
        }
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
        return self

    def readiness(self) -> dict | None:
        """The body of GET /ready, or None when the worker does not answer yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/ready", timeout=1) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with code {self.process.returncode} before it was "
                    f"ready{self._log_hint()}"
                )
            body = self.readiness()
            if body and body.get("ready"):
                return body
            time.sleep(0.2)
        raise TimeoutError(f"the worker was not ready within {timeout:.0f}s{self._log_hint()}")

    def _log_hint(self) -> str:
        return f" (its log: {self.log_path})" if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the graceful stop; SIGKILL if it takes longer. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
