"""The emotion-stream image as a testcontainers container, for other teams' tests with Docker."""

from __future__ import annotations

import json
import urllib.request

from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HttpWaitStrategy

IMAGE = "emotion-stream:cpu"
"""The tag the docs build (`docker build -f deploy/Dockerfile -t emotion-stream:cpu .`) and
compose and Kubernetes run."""


class EmotionStreamContainer(DockerContainer):
    """The emotion-stream image as a testcontainers container, for users with Docker.

    ``bootstrap`` must be reachable from inside the container (for a testcontainers Kafka on
    the same Docker network, its network alias and internal port). Serves the keyword stand-in
    unless ``model`` says otherwise (a directory mounted with ``with_volume_mapping``).
    ``image`` defaults to the tag the docs build; :meth:`start` returns once ``/ready`` answers
    200 (testcontainers' HTTP wait strategy), or raises after ``ready_timeout`` seconds.
    """

    def __init__(
        self,
        bootstrap: str,
        image: str = IMAGE,
        *,
        ready_timeout: float = 120.0,
        model: str = "keywords:",
        input_topic: str = "posts",
        output_topic: str = "post-emotions",
        dlq_topic: str = "posts-dlq",
        **settings: str,
    ) -> None:
        super().__init__(image)
        self.web_port = 6066
        env = {
            "EMOTION_BROKER": f"kafka://{bootstrap.split('://')[-1]}",
            "EMOTION_MODEL": model,
            "EMOTION_INPUT_TOPIC": input_topic,
            "EMOTION_OUTPUT_TOPIC": output_topic,
            "EMOTION_DLQ_TOPIC": dlq_topic,
            "EMOTION_WEB_HOST": "0.0.0.0",
            "EMOTION_WEB_PORT": str(self.web_port),
        }
        for name, value in settings.items():
            env[name if name.startswith("EMOTION_") else f"EMOTION_{name.upper()}"] = str(value)
        self.settings = env
        for name, value in env.items():
            self.with_env(name, value)
        self.with_exposed_ports(self.web_port)
        self.waiting_for(
            HttpWaitStrategy(self.web_port, "/ready")
            .for_status_code(200)
            .with_startup_timeout(int(ready_timeout))
            .with_poll_interval(0.5)
        )

    def url(self) -> str:
        return f"http://{self.get_container_host_ip()}:{self.get_exposed_port(self.web_port)}"

    def ready(self) -> dict:
        """What ``/ready`` answers once the container is started: the model's name and version."""
        with urllib.request.urlopen(f"{self.url()}/ready", timeout=5) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float | None = None) -> dict:
        """What ``/ready`` answers; :meth:`start` has already waited for it (kept for callers
        from before the wait strategy)."""
        return self.ready()
