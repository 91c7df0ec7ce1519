"""watcher._lonk.NatsConnection against a real nats-server: what the hand-written client got wrong.

It never answered the server's PINGs (the first publish after an idle period
failed), refused a token URL, and connected in plain text to a ``tls://`` URL.
Each server here is Debian's ``nats-server`` on loopback, with a config of the
test's own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watcher._destinations import DeliveryError
from watcher._lonk import NatsConnection

from .brokers import NatsSubscriber, Server, need
from .dcmtk import LOOPBACK, free_port
from .helpers import wait_for


@contextlib.contextmanager
def _server(tmp_path: Path, config: str) -> Iterator[Server]:
    port = free_port()
    path = tmp_path / f"nats-{port}.conf"
    path.write_text(f'listen: "{LOOPBACK}:{port}"\n{config}\n')
    server = Server([need("nats-server"), "-c", str(path)], port)
    try:
        yield server.start()
    finally:
        server.stop()


def _delivered(
    url: str, subscribe: str, messages: list[tuple[str, bytes]], **options: Any
) -> list[bytes]:
    """Publish through a new connection; what a subscriber on ``subscribe`` received.

    ``options``: the credentials, as :class:`NatsConnection` takes them; the subscriber
    uses the same (nats-py's names)."""
    given = {"nkey_seed_file": "nkeys_seed", "credentials_file": "user_credentials"}
    with NatsSubscriber(subscribe, **{given[k]: v for k, v in options.items()}) as subscriber:
        connection = NatsConnection(url, timeout=10, **options)
        try:
            connection.publish(messages)
        finally:
            connection.close()
        wait_for(lambda: len(subscriber.messages) == len(messages), 10, "the messages")
        return [data for _, data in subscriber.messages]


def test_an_idle_connection_past_the_servers_ping_interval_still_publishes(
    tmp_path: Path,
) -> None:
    """The server pings every second and drops a client after one unanswered PING."""
    with _server(tmp_path, 'ping_interval: "1s"\nping_max: 1') as server:
        url = f"nats://{LOOPBACK}:{server.port}"
        with NatsSubscriber(url) as subscriber:
            connection = NatsConnection(url, timeout=10)
            try:
                connection.publish([("oxidicom.T.1", b"\x01first")])
                idle = threading.Event()
                idle.wait(3.5)  # three of the server's PINGs, each answered by nats-py
                connection.publish([("oxidicom.T.1", b"\x00")])
            finally:
                connection.close()
            wait_for(lambda: len(subscriber.messages) == 2, 10, "both messages")


@pytest.mark.parametrize(
    ("config", "credentials"),
    [
        ("authorization { user: lonk, password: s3cret }", "lonk:s3cret@"),
        ("authorization { token: t0ken }", "t0ken@"),
    ],
    ids=["user-password", "token"],
)
def test_credentials_in_the_url(tmp_path: Path, config: str, credentials: str) -> None:
    with _server(tmp_path, config) as server:
        url = f"nats://{credentials}{LOOPBACK}:{server.port}"
        assert _delivered(url, url, [("oxidicom.T.2", b"\x00")]) == [b"\x00"]
        wrong = NatsConnection(f"nats://{LOOPBACK}:{server.port}", timeout=5)
        try:
            with pytest.raises(DeliveryError):
                wrong.publish([("oxidicom.T.2", b"\x00")])
        finally:
            wrong.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", f"subjectAltName=IP:{LOOPBACK}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


def test_tls_with_a_self_signed_certificate(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = certificate
    config = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}'
    with _server(tmp_path, config) as server:
        url = f"tls://{LOOPBACK}:{server.port}"
        # Unknown to the system's certificates: refused.
        untrusted = NatsConnection(url, timeout=5)
        try:
            with pytest.raises(DeliveryError):
                untrusted.publish([("oxidicom.T.3", b"\x00")])
        finally:
            untrusted.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the operator's CA
        assert _delivered(url, url, [("oxidicom.T.3", b"\x00")]) == [b"\x00"]


def test_a_tls_url_never_connects_in_plain_text(tmp_path: Path) -> None:
    with _server(tmp_path, "") as server:
        connection = NatsConnection(f"tls://{LOOPBACK}:{server.port}", timeout=5)
        try:
            with pytest.raises(DeliveryError, match="does not require TLS"):
                connection.publish([("oxidicom.T.4", b"\x00")])
        finally:
            connection.close()


def test_a_server_restart_is_reconnected(tmp_path: Path) -> None:
    with _server(tmp_path, "") as server:
        url = f"nats://{LOOPBACK}:{server.port}"
        connection = NatsConnection(url, timeout=10)
        try:
            connection.publish([("oxidicom.T.5", b"\x01")])
            server.stop()
            server.start()
            with NatsSubscriber(url) as subscriber:
                # The first attempt may meet the reconnect under way: a failure, retried.
                deadline = time.monotonic() + 20
                while True:
                    try:
                        connection.publish([("oxidicom.T.5", b"\x00")])
                        break
                    except DeliveryError:
                        if time.monotonic() > deadline:
                            raise
                wait_for(lambda: len(subscriber.messages) == 1, 10, "the message after")
        finally:
            connection.close()


def test_a_server_that_never_answers_costs_one_deadline_and_a_quick_close() -> None:
    with socket.create_server((LOOPBACK, 0)) as silent:
        port = silent.getsockname()[1]
        connection = NatsConnection(f"nats://{LOOPBACK}:{port}", timeout=3)
        started = time.monotonic()
        with pytest.raises(DeliveryError):
            connection.publish([("oxidicom.T.6", b"\x00")])
        assert time.monotonic() - started < 6
        started = time.monotonic()
        connection.close()
        assert time.monotonic() - started < 3
        assert not connection.thread.is_alive()


def _thread_cpu_s(thread: threading.Thread) -> float:
    """The CPU time a thread of this process has used (``/proc``), in seconds."""
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1]
    user, system = fields.split()[11:13]
    return (int(user) + int(system)) / os.sysconf("SC_CLK_TCK")


def test_a_server_that_floods_a_line_without_an_end_is_dropped() -> None:
    """nats-py reads without a bound and rescans its buffer: a server that floods one line
    burnt a core for as long as the connection lasted. The exchange fails within its
    deadline and the connection is closed, by the server's flood detected."""
    dropped = threading.Event()
    info = b'INFO {"server_id":"x","version":"2.9.0","max_payload":1048576}\r\n'

    def serve(server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            probe, _ = server.accept()  # the service's own INFO probe
            with probe:
                probe.sendall(info)
            connection, _ = server.accept()  # nats-py
            with connection:
                connection.sendall(info)
                connection.recv(65536)  # CONNECT and PING
                connection.sendall(b"PONG\r\n-ERR '")
                try:
                    while True:
                        connection.sendall(b"x" * 65536)
                except OSError:
                    dropped.set()

    with socket.create_server((LOOPBACK, 0)) as flooding:
        port = flooding.getsockname()[1]
        threading.Thread(target=serve, args=(flooding,), daemon=True).start()
        connection = NatsConnection(f"nats://{LOOPBACK}:{port}", timeout=20)
        try:
            started = time.monotonic()
            with pytest.raises(DeliveryError, match="kept this service busy"):
                connection.publish([("oxidicom.T.7", b"\x00")])
            assert time.monotonic() - started < 8  # not the flush's 10 s, nor the deadline
            assert dropped.wait(10), "the flooding connection was never closed"
            assert connection.flooded is not None
            # Once dropped, the loop's thread is idle again.
            before = _thread_cpu_s(connection.thread)
            quiet = threading.Event()
            quiet.wait(2)
            assert _thread_cpu_s(connection.thread) - before < 0.5
        finally:
            connection.close()


# -- credentials beyond the URL, and clusters ----------------------------------------------


def _nkey_pair(prefix: int) -> tuple[Any, bytes]:
    import nkeys  # noqa: PLC0415 - the chris extra

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(bytearray(seed)), seed


def _only_with(tmp_path: Path, config: str, **credentials: str) -> None:
    """A server of ``config`` takes a message with ``credentials``, and refuses one
    without them."""
    with _server(tmp_path, config) as server:
        url = f"nats://{LOOPBACK}:{server.port}"
        messages = [("oxidicom.T.8", b"\x00")]
        assert _delivered(url, url, messages, **credentials) == [b"\x00"]
        stranger = NatsConnection(url, timeout=5)
        try:
            with pytest.raises(DeliveryError):
                stranger.publish(messages)
        finally:
            stranger.close()


def test_an_nkey_seed_file(tmp_path: Path) -> None:
    import nkeys  # noqa: PLC0415

    user, seed = _nkey_pair(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    config = f'authorization {{ users = [ {{ nkey: "{user.public_key.decode()}" }} ] }}'
    _only_with(tmp_path, config, nkey_seed_file=str(seed_file))


def _jwt(issuer: Any, subject: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (``ed25519-nkey``) of ``claims``, signed by the nkey pair ``issuer``."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "sub": subject}
    body |= {"name": subject[:8], "nats": {**claims, "version": 2}}
    digest = hashlib.sha256(json.dumps(body).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signed = f"{header}.{b64(json.dumps(body).encode())}"
    return f"{signed}.{b64(issuer.sign(signed.encode()))}"


def test_a_credentials_file_on_a_server_in_operator_mode(tmp_path: Path) -> None:
    """The decentralised authentication of NATS 2 (an operator, an account, a user JWT and
    its seed in a ``.creds`` file, as ``nsc`` writes it): the server trusts the operator."""
    import nkeys  # noqa: PLC0415

    operator, _ = _nkey_pair(nkeys.PREFIX_BYTE_OPERATOR)
    account, _ = _nkey_pair(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = _nkey_pair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1}
    account_jwt = _jwt(
        operator,
        account.public_key.decode(),
        {
            "type": "account",
            "limits": {**unlimited, "imports": -1, "exports": -1, "wildcards": True,
                       "conn": -1, "leaf": -1},
        },
    )  # fmt: skip
    operator_jwt = _jwt(operator, operator.public_key.decode(), {"type": "operator"})
    user_jwt = _jwt(account, user.public_key.decode(), {"type": "user", **unlimited})
    creds = tmp_path / "user.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    config = (
        f"operator: {operator_jwt}\nresolver: MEMORY\n"
        f"resolver_preload: {{\n  {account.public_key.decode()}: {account_jwt}\n}}"
    )
    _only_with(tmp_path, config, credentials_file=str(creds))


def test_a_cluster_url_reaches_the_server_that_answers(tmp_path: Path) -> None:
    """``nats://a,nats://b``: the first server is down, the second takes the messages."""
    with _server(tmp_path, "") as server:
        down = f"nats://{LOOPBACK}:{free_port()}"
        live = f"nats://{LOOPBACK}:{server.port}"
        assert _delivered(f"{down},{live}", live, [("oxidicom.T.10", b"\x00")]) == [b"\x00"]


def test_a_cluster_is_all_tls_or_none() -> None:
    with pytest.raises(ValueError, match="never plain text"):
        NatsConnection(f"tls://{LOOPBACK}:1,nats://{LOOPBACK}:2")
