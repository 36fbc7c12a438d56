"""The emotion-stream image as a testcontainers container, for other teams' tests with Docker."""

from __future__ import annotations

import json
import time
import urllib.request

from testcontainers.core.container import DockerContainer


class EmotionStreamContainer(DockerContainer):
    """The emotion-stream image as a testcontainers container, for users with Docker.

    ``bootstrap`` must be reachable from inside the container (for a testcontainers Kafka on
    the same Docker network, its network alias and internal port). Serves the keyword stand-in
    unless ``model`` says otherwise (a directory mounted with ``with_volume_mapping``).
    """

    def __init__(
        self,
        bootstrap: str,
        image: str = "emotion-stream:latest",
        *,
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

    def url(self) -> str:
        return f"http://{self.get_container_host_ip()}:{self.get_exposed_port(self.web_port)}"

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url()}/ready", timeout=2) as response:
                    return json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the emotion-stream container was not ready within {timeout:.0f} s")

    def start(self) -> EmotionStreamContainer:
        super().start()
        self.wait_ready()
        return self
