"""The worker's settings: one pydantic-settings object, overridable by ``EMOTION_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from emotion_stream.schemas.model_directory import DEFAULT_MODEL_DIR
from emotion_stream.worker.broker.security import KafkaSecurity
from emotion_stream.worker.model.api import (
    ModelOptions,
    ModelSource,
    NumericMode,
    default_graph_cache_dir,
    graph_cache_problem,
    model_source,
)
from emotion_stream.worker.reading import UnreadablePolicy


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConnectionSettings(BaseSettings):
    """What every program reads: the broker and how to reach it, the topics, the size limits,
    how long it may stay unhealthy, and its logs. Each field is read from ``EMOTION_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="EMOTION_", extra="ignore", protected_namespaces=())

    broker: str = Field(
        default="kafka://127.0.0.1:9092",
        description="Bootstrap servers, `kafka://host:port`; several separated by `;`.",
    )
    broker_backend: Literal["kafka", "embedded"] = Field(
        default="kafka",
        description="`kafka` for Apache Kafka or compatible brokers; `embedded` for the bundled "
        "broker, whose quirks are worked around (set by `emotion-stream broker` and the demo).",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How clients talk to the broker: in the clear, over TLS, with a SASL login, or both.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL login mechanism; required with SASL_PLAINTEXT and SASL_SSL."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (a secret: never logged); or use EMOTION_SASL_PASSWORD_FILE."
    )
    sasl_password_file: FilePath | None = Field(
        default=None,
        description="A file holding the SASL password (a mounted secret); trailing newlines are dropped.",
    )
    ssl_ca_file: FilePath | None = Field(
        default=None,
        description="PEM file of the CA(s) that sign the broker's certificate; default: the system's.",
    )
    ssl_cert_file: FilePath | None = Field(
        default=None,
        description="PEM client certificate, for brokers that require mutual TLS (with the key file).",
    )
    ssl_key_file: FilePath | None = Field(
        default=None, description="PEM private key of the client certificate."
    )
    ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names the host connected to."
    )
    input_topic: str = Field(default="posts", min_length=1, description="Posts to label.")
    output_topic: str = Field(
        default="post-emotions", min_length=1, description="One result per post, key = post id."
    )
    dlq_topic: str = Field(
        default="posts-dlq",
        min_length=1,
        description="Dead letters: messages that could not be labelled, with the reason.",
    )

    unreadable: UnreadablePolicy = Field(
        default="mark",
        description="What happens to a post in another language or with no words: `mark` labels it and "
        "marks it (`unreadable` in the result; the aggregates and the page count it apart from the six "
        "emotions), `route` does the same but sends its result to EMOTION_UNREADABLE_TOPIC, `dead_letter` "
        "skips the model and dead-letters it as `unreadable`.",
    )
    unreadable_topic: str = Field(
        default="posts-unreadable",
        min_length=1,
        description="Results of posts the model cannot read (another language, no words) when "
        "EMOTION_UNREADABLE=route; the aggregator counts them from here too.",
    )
    aggregates_topic: str = Field(
        default="post-emotions-1m",
        min_length=1,
        description="`emotion-stream aggregate` publishes windowed counts here; key = window start and "
        "dimension (the latest record per key is the current state).",
    )
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=64 << 10,
        le=64 << 20,
        description="Largest message read or written. A larger input is dead-lettered as `too_large` with a "
        "prefix of its bytes, its size and its SHA-256; a dead letter that would be larger carries such a "
        "prefix "
        "instead of the whole payload. Keep it at or below the topics' `max.message.bytes`.",
    )
    max_inflight_bytes: int = Field(
        default=64 << 20,
        ge=1 << 20,
        description="Most bytes of input messages held between the consumer and the model; beyond it the "
        "worker stops fetching until batches are done (with EMOTION_BATCH_SIZE, what bounds memory under a "
        "backlog).",
    )
    commit_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Longest acknowledged batches may wait for a commit before the worker counts as "
        "unhealthy.",
    )
    unhealthy_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long the worker may stay unhealthy (no progress: model, event loop, consumer, "
        "commits) before it exits with code 1 for its supervisor to restart it.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe log level written (post text never appears above DEBUG)."
    )
    log_format: Literal["json", "console"] = Field(
        default="json", description="`json` for machines, `console` for humans."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        for part in value.split(";"):
            part = part.strip()
            host_port = part.split("://", 1)[1] if "://" in part else part
            scheme = part.split("://", 1)[0] if "://" in part else "kafka"
            if scheme != "kafka" or ":" not in host_port or not host_port.rsplit(":", 1)[1].isdigit():
                raise ValueError(
                    f"{part!r} is not a broker address: use kafka://host:port (several separated by ';')"
                )
        return value

    @model_validator(mode="after")
    def _consistent_security(self) -> ConnectionSettings:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        problems = []
        if sasl and (self.sasl_mechanism is None or not self.sasl_username):
            problems.append(
                f"EMOTION_SECURITY_PROTOCOL={self.security_protocol} needs EMOTION_SASL_MECHANISM and "
                "EMOTION_SASL_USERNAME"
            )
        if sasl and (self.sasl_password is None) == (self.sasl_password_file is None):
            problems.append("SASL needs exactly one of EMOTION_SASL_PASSWORD and EMOTION_SASL_PASSWORD_FILE")
        if not sasl and any(
            v is not None
            for v in (self.sasl_mechanism, self.sasl_username, self.sasl_password, self.sasl_password_file)
        ):
            problems.append(
                f"EMOTION_SASL_* settings are given but EMOTION_SECURITY_PROTOCOL={self.security_protocol}: "
                "use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if not tls and any(v is not None for v in (self.ssl_ca_file, self.ssl_cert_file, self.ssl_key_file)):
            problems.append(
                f"EMOTION_SSL_* files are given but EMOTION_SECURITY_PROTOCOL={self.security_protocol}: use "
                "SSL or SASL_SSL"
            )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            problems.append("mutual TLS needs both EMOTION_SSL_CERT_FILE and EMOTION_SSL_KEY_FILE")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def security(self) -> KafkaSecurity:
        """How the product's Kafka clients authenticate and encrypt (the password read now)."""
        password = self.sasl_password
        if self.sasl_password_file is not None:
            password = SecretStr(self.sasl_password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        return KafkaSecurity(
            protocol=self.security_protocol,
            mechanism=self.sasl_mechanism,
            username=self.sasl_username,
            password=password,
            ca_file=self.ssl_ca_file,
            cert_file=self.ssl_cert_file,
            key_file=self.ssl_key_file,
            check_hostname=self.ssl_check_hostname,
        )

    @model_validator(mode="after")
    def _distinct_topics(self) -> ConnectionSettings:
        topics = (
            self.input_topic,
            self.output_topic,
            self.dlq_topic,
            self.unreadable_topic,
            self.aggregates_topic,
        )
        if len(set(topics)) != len(topics):
            raise ValueError(
                "EMOTION_INPUT_TOPIC, EMOTION_OUTPUT_TOPIC, EMOTION_DLQ_TOPIC, EMOTION_UNREADABLE_TOPIC and "
                "EMOTION_AGGREGATES_TOPIC must be five different topics"
            )
        return self

    @property
    def bootstrap_servers(self) -> list[str]:
        """The broker addresses as `host:port` strings, for plain Kafka clients."""
        return [p.strip().split("://", 1)[-1] for p in self.broker.split(";") if p.strip()]


class WorkerSettings(ConnectionSettings):
    """The worker's settings (`emotion-stream worker`): its group, the model, batching,
    publishing and its web port."""

    group_id: str = Field(
        default="emotion-stream",
        description="Consumer group (and Faust app id): workers with the same group share the input "
        "partitions.",
    )
    model: str = Field(
        default=str(DEFAULT_MODEL_DIR),
        description="Model directory (Hugging Face format, safetensors) or hub id; `keywords:` (or "
        "`keywords:TABLE.json`) is a deterministic keyword stand-in for other teams' tests, not a real "
        "model.",
    )
    model_revision: str | None = Field(
        default=None,
        description="Pin a hub model to a commit (or tag): the same weights on every start. Not for a "
        "local directory, whose version is its identity file.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the model runs; auto picks CUDA when there is one."
    )
    numeric: NumericMode = Field(
        default="auto",
        description="Numeric mode: auto (mixed precision on CUDA; on the CPU the fastest mode the model "
        "directory records as verified for this model, within 0.002 accuracy and 99% label agreement of "
        "fp32, that this CPU runs well; else fp32), fp32, bf16 autocast (bf16, or fp16 where the GPU lacks "
        "bf16; on the CPU only with AVX512-BF16 or AMX) or int8 dynamic quantization (CPU only). "
        "`emotion-stream verify-modes DIR` measures and records them; `train` does it after export.",
    )
    batch_size: int = Field(default=256, ge=1, le=4096, description="Most posts gathered into one batch.")
    batch_wait_ms: int = Field(
        default=150,
        ge=0,
        le=60_000,
        description="Longest wait to fill a batch, from when its first post was produced (its Kafka "
        "timestamp, counted at most this far back). Waiting about as long as a batch takes keeps the model "
        "out of a regime of small back-to-back batches (docs/architecture.md).",
    )
    model_batch_size: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Most posts per padded forward pass; a batch is cut into length-sorted sub-batches of at "
        "most "
        "this size (a packed pass is bounded by its rows of 128 tokens instead).",
    )
    max_length: int = Field(
        default=128, ge=8, le=512, description="Token limit per post (longer posts are truncated)."
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for the model; default: torch's choice."
    )
    cpu_passes: int | None = Field(
        default=None,
        ge=1,
        description="Forward passes run at once on the CPU, sharing the torch threads; default: one per "
        "thread, at most 4.",
    )
    packing: bool = Field(
        default=True,
        description="On the CPU, run a small batch (a few rows of 128 tokens per pass) with its posts laid "
        "end to "
        "end instead of padded: the same results, 1.2-1.35x faster on batches of 4-24 posts (DistilBERT and "
        "BERT "
        "models; others always run padded).",
    )
    prepack_weights: bool = Field(
        default=True,
        description="In fp32 on the CPU, lay the linear layers' weights out once at load for the matrix "
        "products "
        "instead of on every pass: the same results, 1.1-1.3x faster (most on small batches).",
    )
    model_process: bool = Field(
        default=True,
        description="Run the model in a process of its own, so it never waits for the worker's Python "
        "(and the worker's Kafka work never waits for the model's); false runs it in the worker's process.",
    )
    serving_graph: bool = Field(
        default=True,
        description="Where the model runs int8 on the CPU as traced graphs, the model process saves them "
        "once (with the tokenizer) in EMOTION_GRAPH_CACHE_DIR and serves them without loading transformers: "
        "the same labels in less memory (the model process's peak under a 100,000-post backlog 482 MiB "
        "against 602) and a restart that loads in under a second; false loads the model directory every "
        "start.",
    )
    graph_cache_dir: Path | None = Field(
        default=None,
        description="Where serving graphs are kept (one per model, torch version and setting that shapes "
        "it); default: emotion-stream-graphs-UID (the user's id) in the system's temporary directory.",
    )

    @field_validator("graph_cache_dir")
    @classmethod
    def _graph_cache_usable(cls, value: Path | None) -> Path | None:
        problem = None if value is None else graph_cache_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}: name a directory only this user can write, or leave it unset")
        return value

    language_check: bool = Field(
        default=True,
        description="Detect each post's language and mark the posts the model cannot read (see "
        "EMOTION_UNREADABLE); off, only posts with no words are marked.",
    )
    languages: list[str] | None = Field(
        default=None,
        description='The languages the model reads, ISO 639-1 codes as a JSON list (e.g. `["en"]`); '
        "default: those recorded in the model directory, else English.",
    )
    language_min_score: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="How sure the language detector must be that a post is in none of the model's "
        "languages before it counts as `other_language` (below it, the post is read as the model's own; "
        "0.9 set apart none of 2,000 English validation posts and caught 97.7 % of posts in other "
        "languages, docs/language.md).",
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Top score a label needs to be `confident` (below it, the aggregates and the page "
        "count the post as unsure); default: the threshold recorded in the model directory (its model "
        "card says how it was chosen), else 0.5.",
    )
    propagate_headers: list[str] = Field(
        default_factory=list,
        description="Record headers copied from each post to its result or dead letter, besides the W3C "
        '`traceparent` and `tracestate` (always copied); a JSON list, e.g. `["x-request-id"]`.',
    )
    commit_interval_ms: int = Field(
        default=100,
        ge=10,
        le=60_000,
        description="How often acknowledged offsets are committed. Short: a crash re-does little more than "
        "the batches in flight.",
    )
    send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Longest wait for the broker to acknowledge a batch's results; past it the worker stops "
        "with exit 1, the batch uncommitted.",
    )
    model_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Longest a batch may stay in the model before the worker counts as unhealthy; default: "
        "20 times the expected time of a full batch as measured while running, at least 60 s (300 s for the "
        "first batches).",
    )
    web_enabled: bool = Field(default=True, description="Serve `/health`, `/ready` and `/metrics`.")
    web_host: str = Field(
        default="127.0.0.1",
        description="Address of those endpoints (`0.0.0.0` to reach them from outside a container).",
    )
    web_port: int = Field(default=6066, ge=1, le=65535, description="Port of those endpoints.")

    classify: bool = Field(
        default=False,
        description="Serve `POST /classify` on the worker's web port: texts labelled in the stream's "
        "next batch, by the same model.",
    )
    classify_token: SecretStr | None = Field(
        default=None,
        description="Bearer token `/classify` requires (a secret: never logged); required when "
        "EMOTION_WEB_HOST is not a loopback address.",
    )
    classify_max_texts: int = Field(default=64, ge=1, le=1024, description="Most texts in one request.")
    classify_max_concurrent: int = Field(
        default=16, ge=1, description="Requests in progress at once; more are answered 429."
    )

    @model_validator(mode="after")
    def _classify_guarded(self) -> WorkerSettings:
        if self.classify and self.classify_token is None and not _loopback(self.web_host):
            raise ValueError(
                f"EMOTION_CLASSIFY=true with EMOTION_WEB_HOST={self.web_host} would let anyone who can "
                "reach the port use the model: set EMOTION_CLASSIFY_TOKEN (clients send it as a bearer "
                "token), or bind EMOTION_WEB_HOST to 127.0.0.1"
            )
        return self

    @property
    def batch_wait_s(self) -> float:
        """EMOTION_BATCH_WAIT_MS in seconds (the one place milliseconds become seconds)."""
        return self.batch_wait_ms / 1000

    @property
    def commit_interval_s(self) -> float:
        """EMOTION_COMMIT_INTERVAL_MS in seconds."""
        return self.commit_interval_ms / 1000

    @property
    def model_source(self) -> ModelSource:
        """What EMOTION_MODEL names: the keyword stand-in, a local directory or a hub id."""
        return model_source(self.model)

    def model_options(self) -> ModelOptions:
        """How the model is loaded and run, as the model runner takes it."""
        return ModelOptions(
            device=self.device,
            numeric=self.numeric,
            max_length=self.max_length,
            batch_size=self.model_batch_size,
            torch_threads=self.torch_threads,
            cpu_passes=self.cpu_passes,
            packing=self.packing,
            prepack=self.prepack_weights,
            revision=self.model_revision,
            graph_cache_dir=(
                str(self.graph_cache_dir or default_graph_cache_dir()) if self.serving_graph else None
            ),
        )

    @property
    def faust_broker(self) -> list[str]:
        return [f"kafka://{hp}" for hp in self.bootstrap_servers]


class WindowSettings(ConnectionSettings):
    """The windows' length, read by the aggregator that cuts them and the page that shows them."""

    aggregate_window_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Length of the tumbling windows in seconds (the aggregator cuts them, the page "
        "shows it).",
    )


class AggregatorSettings(WindowSettings):
    """The aggregator's settings (`emotion-stream aggregate`)."""

    aggregate_update_s: float = Field(
        default=2.0, gt=0, description="An open window's record is re-published at most this often."
    )
    aggregate_grace_s: float = Field(
        default=10.0, ge=0, description="A window closes once results this much later than its end arrive."
    )
    aggregate_retain_s: float = Field(
        default=3600.0,
        gt=0,
        description="Closed windows kept (and re-published when a late result arrives) for this long.",
    )
    aggregate_dimensions: list[Literal["source", "lang"]] = Field(
        default=["source", "lang"],
        description="Post fields broken down beside the totals (JSON list; `[]` for totals only).",
    )
    aggregate_group_id: str = Field(
        default="emotion-stream-aggregate", min_length=1, description="Consumer group of the aggregator."
    )
    aggregate_max_skew_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="A result's post time (or a dead letter's failure time) more than this far ahead of the "
        "aggregator's wall clock is not used: it counts at its Kafka record's timestamp when that one is "
        "within bounds, else as out of range (a metric), and never moves the windows' clock.",
    )
    aggregate_max_age_s: float = Field(
        default=86400.0,
        gt=0,
        description="The same bound into the past: older times count at the record's timestamp (or as out of "
        "range). An aggregator that was down for less than this catches up at the posts' own times; "
        "recovered windows older than this are dropped.",
    )
    aggregate_host: str = Field(
        default="127.0.0.1",
        description="Address of the aggregator's `/health`, `/ready` and `/metrics` (`0.0.0.0` to reach "
        "them from outside a container).",
    )
    aggregate_port: int = Field(
        default=6067, ge=0, le=65535, description="Port of those endpoints (0: any free port, logged)."
    )


class DashboardSettings(WindowSettings):
    """The live page's settings (`emotion-stream dashboard`)."""

    dashboard_host: str = Field(default="127.0.0.1", description="Address of the live dashboard page.")
    dashboard_port: int = Field(default=8080, ge=1, le=65535, description="Port of the live dashboard page.")
    dashboard_show_text: bool = Field(
        default=False,
        description="Show post text in the dashboard's recent results (read from the input topic); off: "
        "ids, labels and scores only.",
    )
    dashboard_token: SecretStr | None = Field(
        default=None,
        description="Token the dashboard page requires (a secret: never logged): open it once as "
        "`/?token=<token>` (a cookie keeps it) or send `Authorization: Bearer <token>`; required when "
        "EMOTION_DASHBOARD_SHOW_TEXT is on and EMOTION_DASHBOARD_HOST is not a loopback address.",
    )

    @model_validator(mode="after")
    def _dashboard_text_guarded(self) -> DashboardSettings:
        if self.dashboard_show_text and self.dashboard_token is None and not _loopback(self.dashboard_host):
            raise ValueError(
                f"EMOTION_DASHBOARD_SHOW_TEXT=true with EMOTION_DASHBOARD_HOST={self.dashboard_host} would "
                "show post text to anyone who can reach the page: set EMOTION_DASHBOARD_TOKEN (open the "
                "page as /?token=<token>), bind EMOTION_DASHBOARD_HOST to 127.0.0.1, or turn "
                "EMOTION_DASHBOARD_SHOW_TEXT off"
            )
        return self
