"""A SASL listener in front of the embedded broker: clients must log in before anything else.

The embedded broker cannot check SASL logins itself (its SCRAM users need a storage engine
its build lacks), so this listener does what a Kafka broker's SASL listener does on the
wire, and then passes the authenticated connection through. Before the login it answers
SaslHandshake and SaslAuthenticate, forwards ApiVersions to the broker, and closes the
connection on any other request, as a broker does. Mechanisms: PLAIN and SCRAM-SHA-256/512
(RFC 5802 server side, per-user salts and iteration counts), with or without TLS in front
(``ssl_context``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct

from tests.faults.proxy import TcpProxy

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
ITERATIONS = 4096


def _frame(correlation_id: int, body: bytes) -> bytes:
    payload = struct.pack(">i", correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, int, int, int, bytes]:
    """One request: (the whole frame, api key, version, correlation id, body after the header)."""
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    payload = await reader.readexactly(size)
    api_key, version, correlation = struct.unpack(">hhi", payload[:8])
    client_id_length = struct.unpack(">h", payload[8:10])[0]
    body = payload[10 + max(client_id_length, 0) :]
    return struct.pack(">i", size) + payload, api_key, version, correlation, body


class _Scram:
    """Server side of one SCRAM exchange (RFC 5802) against a known password."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = SCRAM_HASHES[mechanism]
        self.users = users
        self.state = "first"
        self.user = ""

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def step(self, token: bytes) -> tuple[bytes | None, bool]:
        """(the answer, or None when the login failed; whether the exchange is complete)."""
        if self.state == "first":
            bare = token.decode().split(",", 2)[2]  # drop the GS2 header "n,,"
            fields = dict(item.split("=", 1) for item in bare.split(","))
            self.user = fields.get("n", "")
            if self.user not in self.users:
                return None, True
            self.salt = hashlib.sha256(self.user.encode()).digest()[:16]
            self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={ITERATIONS}"
            self.auth_message_head = f"{bare},{first}"
            self.state = "final"
            return first.encode(), False
        final = token.decode()
        without_proof, _, proof = final.rpartition(",p=")
        fields = dict(item.split("=", 1) for item in without_proof.split(","))
        if fields.get("r") != self.nonce:
            return None, True
        salted = hashlib.pbkdf2_hmac(self.hash().name, self.users[self.user].encode(), self.salt, ITERATIONS)
        message = f"{self.auth_message_head},{without_proof}".encode()
        stored_key = self.hash(self._hmac(salted, b"Client Key")).digest()
        signature = self._hmac(stored_key, message)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=False))
        if not hmac.compare_digest(self.hash(client_key).digest(), stored_key):
            return None, True
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), message)
        return f"v={base64.b64encode(server_signature).decode()}".encode(), True


class SaslListener(TcpProxy):
    """A :class:`TcpProxy` that lets a connection through only after a SASL login.

    ``users``: name -> password. ``logins`` and ``refusals`` count the outcomes, by user.
    """

    def __init__(self, listen_port: int, target_port: int, users: dict[str, str], **kwargs) -> None:
        super().__init__(listen_port, target_port, **kwargs)
        self.users = users
        self.mechanisms = ["PLAIN", *SCRAM_HASHES]
        self.logins: dict[str, int] = {}
        self.refusals: dict[str, int] = {}

    async def admit(self, client_reader, client_writer, broker_reader, broker_writer) -> bool:
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame, api_key, version, correlation, body = await _read_request(client_reader)
            if api_key == API_VERSIONS:
                broker_writer.write(frame)
                await broker_writer.drain()
                size = await broker_reader.readexactly(4)
                client_writer.write(size + await broker_reader.readexactly(struct.unpack(">i", size)[0]))
            elif api_key == SASL_HANDSHAKE:
                (length,) = struct.unpack(">h", body[:2])
                mechanism = body[2 : 2 + length].decode()
                error = 0 if mechanism in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                listed = struct.pack(">i", len(self.mechanisms)) + b"".join(map(_string, self.mechanisms))
                client_writer.write(_frame(correlation, struct.pack(">h", error) + listed))
                if error or version == 0:  # version 0 would send raw tokens: not offered
                    await client_writer.drain()
                    return False
                scram = _Scram(mechanism, self.users) if mechanism in SCRAM_HASHES else None
            elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                (length,) = struct.unpack(">i", body[:4])
                token = body[4 : 4 + length]
                if scram is not None:
                    answer, done = scram.step(token)
                    user = scram.user
                else:
                    _, user, password = token.decode().split("\0")
                    done = True
                    answer = b"" if self.users.get(user) == password else None
                self._answer_authenticate(client_writer, correlation, version, answer)
                await client_writer.drain()
                if answer is None:
                    self.refusals[user] = self.refusals.get(user, 0) + 1
                    return False
                if done:
                    self.logins[user] = self.logins.get(user, 0) + 1
                    return True
            else:  # a broker closes a connection that skips the login
                return False
            await client_writer.drain()

    @staticmethod
    def _answer_authenticate(writer, correlation: int, version: int, answer: bytes | None) -> None:
        if answer is None:
            body = struct.pack(">h", SASL_AUTHENTICATION_FAILED)
            body += _string("Authentication failed: invalid username or password") + _bytes(b"")
        else:
            body = struct.pack(">h", 0) + _string(None) + _bytes(answer)
        if version >= 1:
            body += struct.pack(">q", 0)  # session lifetime: none
        writer.write(_frame(correlation, body))
