"""Secured Kafka: TLS end to end through a TLS listener, clear failures, and secrets kept."""

import contextlib
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from emotion_stream.worker.broker.embedded import EmbeddedBroker, free_port
from tests.faults.proxy import TcpProxy
from tests.faults.sasl import SaslListener

pytestmark = pytest.mark.integration

PASSWORD = "pa55-Wörd-that-must-never-show"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """The embedded broker behind a TLS listener whose certificate a test CA signed."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(directory / "other-ca.pem"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    with _listener(TcpProxy, ssl_context=server_context) as (url, _):
        yield url, directory


@contextlib.contextmanager
def _listener(kind, **options):
    """The embedded broker, reached only through a listener of ``kind`` (TLS, SASL) built with
    ``options``; yields its URL and the listener."""
    port = free_port()
    with EmbeddedBroker(advertised_port=port) as embedded:
        listener = kind(port, embedded.port, **options).start()
        try:
            yield f"kafka://127.0.0.1:{port}", listener
        finally:
            listener.stop()


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    """The embedded broker behind a SASL_SSL listener (test CA) that knows one user, and behind a
    SASL_PLAINTEXT one; yields both URLs, the listeners and the CA's path."""
    directory = tmp_path_factory.mktemp("sasl")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    users = {"emotion": PASSWORD}
    with (
        _listener(SaslListener, users=users, ssl_context=server_context) as (tls_url, tls_listener),
        _listener(SaslListener, users=users) as (plain_url, plain_listener),
    ):
        yield {
            "SASL_SSL": (tls_url, tls_listener),
            "SASL_PLAINTEXT": (plain_url, plain_listener),
            "ca": directory / "ca.pem",
        }


def _cli(args, env, timeout=120, stdin=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def _tls_env(url: str, ca: Path, topics, **extra) -> dict:
    return {
        "EMOTION_BROKER": url,
        "EMOTION_BROKER_BACKEND": "embedded",
        "EMOTION_SECURITY_PROTOCOL": "SSL",
        "EMOTION_SSL_CA_FILE": str(ca),
        "EMOTION_INPUT_TOPIC": topics.input,
        "EMOTION_OUTPUT_TOPIC": topics.output,
        "EMOTION_DLQ_TOPIC": topics.dlq,
        "EMOTION_GROUP_ID": topics.group,
        **extra,
    }


def _consume_while_a_worker_runs(env: dict, tiny_model, tmp_path, **extra):
    """Start a worker with ``env``, read its output topic with `consume` once it is ready, stop
    it: (its exit code, the consume run, its log)."""
    from emotion_stream.worker.cli.worker_process import WorkerProcess

    log = tmp_path / "worker.log"
    worker_env = {**os.environ, **env, "EMOTION_MODEL": str(tiny_model), "EMOTION_TORCH_THREADS": "1"}
    worker = WorkerProcess({**worker_env, **extra}, log_path=log).start()
    try:
        worker.wait_ready(timeout=90)
        consumed = _cli(["consume", "--json", "--idle-timeout", "8"], env)
    finally:
        code = worker.stop()
    return code, consumed, log.read_text()


def test_the_worker_and_the_cli_talk_tls_end_to_end(tls_broker, topics, tiny_model, tmp_path):
    url, certs = tls_broker
    env = _tls_env(url, certs / "ca.pem", topics)
    lines = "\n".join(f"i feel {w} today" for w in ("glad", "scared", "lonely", "furious", "amazed")) + "\n"
    produced = _cli(["produce", "-"], env, stdin=lines)
    assert produced.returncode == 0 and "sent 5 messages" in produced.stderr, produced.stderr
    code, consumed, log = _consume_while_a_worker_runs(
        env, tiny_model, tmp_path, EMOTION_LOG_FORMAT="console"
    )
    assert code == 0, log[-2000:]
    assert consumed.returncode == 0, consumed.stderr
    assert len(consumed.stdout.strip().splitlines()) == 5, consumed.stdout


def test_a_client_with_the_wrong_ca_fails_at_start_with_what_to_fix(tls_broker, topics, tiny_model):
    url, certs = tls_broker
    env = _tls_env(url, certs / "other-ca.pem", topics, EMOTION_MODEL=str(tiny_model))
    for command in (["worker"], ["consume", "--idle-timeout", "5"]):
        result = _cli(command, env, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "is not trusted" in result.stderr and "EMOTION_SSL_CA_FILE" in result.stderr
        assert result.stdout == ""  # consumed nothing


def test_plaintext_against_the_tls_listener_says_which_setting_to_look_at(tls_broker, topics, tiny_model):
    url, _ = tls_broker
    env = {
        **_tls_env(url, Path("/dev/null"), topics, EMOTION_MODEL=str(tiny_model)),
        "EMOTION_SECURITY_PROTOCOL": "PLAINTEXT",
    }
    del env["EMOTION_SSL_CA_FILE"]
    result = _cli(["worker"], env, timeout=60)
    assert result.returncode == 2 and "EMOTION_SECURITY_PROTOCOL" in result.stderr, result.stderr


def _sasl_env(sasl_broker, protocol: str, mechanism: str, topics, **extra) -> dict:
    url, _ = sasl_broker[protocol]
    env = _tls_env(
        url,
        sasl_broker["ca"],
        topics,
        EMOTION_SECURITY_PROTOCOL=protocol,
        EMOTION_SASL_MECHANISM=mechanism,
        EMOTION_SASL_USERNAME="emotion",
        **extra,
    )
    if protocol == "SASL_PLAINTEXT":
        del env["EMOTION_SSL_CA_FILE"]
    return env


def test_the_worker_logs_in_with_scram_over_tls_and_never_shows_the_password_even_at_debug(
    sasl_broker, topics, tiny_model, tmp_path
):
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD + "\n")  # a mounted secret ends with a newline
    env = _sasl_env(
        sasl_broker, "SASL_SSL", "SCRAM-SHA-512", topics, EMOTION_SASL_PASSWORD_FILE=str(secret_file)
    )
    _, listener = sasl_broker["SASL_SSL"]
    logins_before = listener.logins.get("emotion", 0)
    produced = _cli(["produce", "-"], env, stdin="i feel glad\ni feel scared\ni feel furious\n")
    assert produced.returncode == 0 and "sent 3 messages" in produced.stderr, produced.stderr
    code, consumed, output = _consume_while_a_worker_runs(
        env, tiny_model, tmp_path, EMOTION_LOG_LEVEL="DEBUG", EMOTION_LOG_FORMAT="json"
    )
    assert code == 0, output[-2000:]
    assert consumed.returncode == 0 and len(consumed.stdout.splitlines()) == 3, consumed.stderr
    assert listener.logins["emotion"] > logins_before and not listener.refusals
    assert '"level": "debug"' in output  # DEBUG lines were captured
    for text in (output, produced.stderr, consumed.stdout, consumed.stderr):
        assert PASSWORD not in text and PASSWORD.encode().hex() not in text


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_the_cli_logs_in_over_sasl_plaintext(sasl_broker, topics, mechanism):
    env = _sasl_env(sasl_broker, "SASL_PLAINTEXT", mechanism, topics, EMOTION_SASL_PASSWORD=PASSWORD)
    produced = _cli(["produce", "-"], env, stdin="i feel glad\n")
    assert produced.returncode == 0 and "sent 1 messages" in produced.stderr, produced.stderr
    consumed = _cli(["consume", "--topic", topics.input, "--json", "--idle-timeout", "5"], env)
    assert consumed.returncode == 0 and len(consumed.stdout.splitlines()) == 1, consumed.stderr


def test_a_wrong_password_fails_at_start_saying_what_to_check_and_never_shows_it(
    sasl_broker, topics, tiny_model
):
    wrong = PASSWORD + "-but-wrong"
    _, listener = sasl_broker["SASL_SSL"]
    refusals_before = listener.refusals.get("emotion", 0)
    env = _sasl_env(
        sasl_broker,
        "SASL_SSL",
        "SCRAM-SHA-256",
        topics,
        EMOTION_SASL_PASSWORD=wrong,
        EMOTION_MODEL=str(tiny_model),
        EMOTION_LOG_LEVEL="DEBUG",
    )
    for command in (["worker"], ["consume", "--idle-timeout", "5"], ["produce", "-"]):
        result = _cli(command, env, timeout=90, stdin="i feel glad\n")
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-2000:]
        assert "log in" in result.stderr and "EMOTION_SASL_USERNAME" in result.stderr, result.stderr
        assert result.stdout == ""  # consumed nothing
        assert wrong not in output and PASSWORD not in output
    assert listener.refusals["emotion"] > refusals_before


def test_inconsistent_security_settings_stop_the_program_naming_the_variables(tmp_path):
    cases = [
        ({"EMOTION_SECURITY_PROTOCOL": "SASL_SSL"}, "EMOTION_SASL_MECHANISM"),
        (
            {"EMOTION_SASL_USERNAME": "u", "EMOTION_SASL_PASSWORD": PASSWORD},
            "EMOTION_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        (
            {"EMOTION_SECURITY_PROTOCOL": "SSL", "EMOTION_SSL_CERT_FILE": __file__},
            "EMOTION_SSL_CERT_FILE and EMOTION_SSL_KEY_FILE",
        ),
        (
            {
                "EMOTION_SECURITY_PROTOCOL": "SASL_SSL",
                "EMOTION_SASL_MECHANISM": "PLAIN",
                "EMOTION_SASL_USERNAME": "u",
            },
            "exactly one of EMOTION_SASL_PASSWORD and EMOTION_SASL_PASSWORD_FILE",
        ),
        (
            {"EMOTION_SECURITY_PROTOCOL": "SSL", "EMOTION_SSL_CA_FILE": str(tmp_path / "absent.pem")},
            "EMOTION_SSL_CA_FILE",
        ),
    ]
    for env, expected in cases:
        result = _cli(["worker"], env, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, (env, result.stderr)
        assert PASSWORD not in result.stderr


def test_the_settings_and_the_security_object_never_show_the_password(monkeypatch):
    from emotion_stream.worker.settings import WorkerSettings

    for name, value in {
        "EMOTION_SECURITY_PROTOCOL": "SASL_SSL",
        "EMOTION_SASL_MECHANISM": "SCRAM-SHA-256",
        "EMOTION_SASL_USERNAME": "u",
        "EMOTION_SASL_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings()
    security = settings.security()
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert PASSWORD not in repr(security) and PASSWORD not in settings.model_dump_json()
    assert security.aiokafka()["sasl_plain_password"] == PASSWORD  # only the client gets it


@pytest.fixture(scope="module")
def mutual_tls_broker(tmp_path_factory):
    """The embedded broker behind a TLS listener that requires a client certificate from its CA."""
    directory = tmp_path_factory.mktemp("mtls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert("emotion-worker@example.net")
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    with _listener(TcpProxy, ssl_context=server_context) as (url, _):
        yield url, directory


def test_mutual_tls_with_the_client_certificate_and_a_clear_failure_without(mutual_tls_broker, topics):
    url, certs = mutual_tls_broker
    env = _tls_env(
        url,
        certs / "ca.pem",
        topics,
        EMOTION_SSL_CERT_FILE=str(certs / "client.pem"),
        EMOTION_SSL_KEY_FILE=str(certs / "client.key"),
    )
    produced = _cli(["produce", "-"], env, stdin="i feel glad\ni feel scared\n")
    assert produced.returncode == 0 and "sent 2 messages" in produced.stderr, produced.stderr
    consumed = _cli(["consume", "--topic", topics.input, "--json", "--idle-timeout", "5"], env)
    assert consumed.returncode == 0 and len(consumed.stdout.splitlines()) == 2, consumed.stderr

    anonymous = _tls_env(url, certs / "ca.pem", topics)
    refused = _cli(["consume", "--idle-timeout", "5"], anonymous, timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "EMOTION_SSL_CERT_FILE" in refused.stderr, refused.stderr
