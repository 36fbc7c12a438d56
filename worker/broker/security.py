"""How every Kafka client of the product authenticates and encrypts: one place, one object.

:class:`KafkaSecurity` is built from the settings (``EMOTION_SECURITY_PROTOCOL`` and friends)
and handed to the Faust app (as its broker credentials), to the plain aiokafka clients of the
command line, the broker probe and the tests. The password is a secret value: it is read from
the setting or a mounted file, kept in a ``SecretStr`` and only revealed to the client that
sends it, never to a log line, a repr or an error message.

:func:`preflight` connects once before the worker starts, so that a wrong CA, a hostname that
does not match or a refused login stops the program at once with a message that says which
setting to look at, instead of a client retrying for ever.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class BrokerConnectionError(RuntimeError):
    """The broker cannot be reached, or refuses this client; the message says what to check."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.check_hostname = self.check_hostname
        if not self.check_hostname:
            context.verify_mode = ssl.CERT_REQUIRED  # the certificate is still checked against the CA
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return context

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients (producer, consumer, admin, client)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password.get_secret_value() if self.password else None
        return kwargs

    def faust(self) -> Any:
        """The Faust app's ``broker_credentials`` (None for plaintext)."""
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password.get_secret_value() if self.password else None,
                ssl_context=self.ssl_context(),
                mechanism=self.mechanism,
            )
        if self.uses_tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={value!r}"
            for name, value in vars(self).items()
            if value is not None and name != "password"
        )
        return f"KafkaSecurity({shown}{', password=<secret>' if self.password else ''})"


async def _handshake(host: str, port: int, security: KafkaSecurity, timeout: float) -> None:
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host, port, ssl=security.ssl_context(), server_hostname=host if security.uses_tls else None
        ),
        timeout,
    )
    writer.close()


async def preflight(bootstrap_servers: list[str], security: KafkaSecurity, timeout: float = 10.0) -> None:
    """Connect to the first bootstrap server that answers and log in; raise
    :class:`BrokerConnectionError` naming the settings to check if none will take us."""
    from aiokafka.client import AIOKafkaClient

    problems = []
    for address in bootstrap_servers:
        host, _, port = address.rpartition(":")
        try:
            await _handshake(host, int(port), security, timeout)
        except ssl.SSLCertVerificationError as exc:
            raise BrokerConnectionError(
                f"the TLS certificate of {address} is not trusted: {exc.verify_message}. "
                "Set EMOTION_SSL_CA_FILE to the CA that signed the broker's certificate"
                + (
                    " (or check the broker address: it must match the certificate's names)"
                    if "hostname" in str(exc)
                    else ""
                )
            ) from None
        except ssl.SSLError as exc:
            raise BrokerConnectionError(
                f"TLS with {address} failed: {exc.reason or exc}. Check EMOTION_SECURITY_PROTOCOL "
                "(SSL or SASL_SSL need a TLS listener) and EMOTION_SSL_* settings"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            problems.append(f"{address}: {exc!r}")
            continue
        client = AIOKafkaClient(
            bootstrap_servers=[address], request_timeout_ms=int(timeout * 1000), **security.aiokafka()
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
            return
        except Exception as exc:
            what = "log in to" if security.uses_sasl else "talk Kafka with"
            if security.uses_sasl:
                hint = "Check EMOTION_SASL_MECHANISM, EMOTION_SASL_USERNAME and the password"
            elif security.uses_tls and security.cert_file is None:
                hint = (
                    "The listener may want a client certificate (EMOTION_SSL_CERT_FILE and "
                    "EMOTION_SSL_KEY_FILE) or a SASL login (EMOTION_SECURITY_PROTOCOL=SASL_SSL)"
                )
            else:
                hint = "Check EMOTION_SECURITY_PROTOCOL: the listener may expect TLS or SASL"
            raise BrokerConnectionError(
                f"could not {what} {address} ({type(exc).__name__}). {hint}"
            ) from None
        finally:
            await client.close()
    raise BrokerConnectionError(
        "no broker answered at " + ", ".join(problems) + ": check EMOTION_BROKER and that the broker is up"
    )
