"""TLS on the client port: `wss://` with a certificate made here, the full protocol over it
(encryption inside TLS too), plaintext and bad TLS clients refused without harm, and a clear
start-up error for bad certificate files."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, envelope, subscribe_msg
from tests.e2eutil import E2EClient
from tests.wsutil import open_ready, recv_type, stats


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def client_ctx(cert_path: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cert_path)
    return ctx


def test_wss_serves_the_protocol(make_server: Any, cert: tuple[str, str]) -> None:
    srv = make_server({"tls_cert_file": cert[0], "tls_key_file": cert[1]})
    assert srv.url.startswith("wss://")

    async def main() -> None:
        ctx = client_ctx(cert[0])
        ws, ready = await open_ready(srv.url, ssl=ctx)
        assert ready["t"] == "server_ready"
        await ws.send(subscribe_msg(["t"]))
        await recv_type(ws, "subscription_update")
        await ws.send(envelope("publish", {"topic": "t", "count": 500, "payload": {"pad": "x" * 300}}))
        assert [(await recv_type(ws, "pub"))["p"]["i"] for _ in range(500)] == list(range(500))
        # E2E encryption inside TLS.
        c, _ = await E2EClient.open(srv.url, ssl=ctx)
        await c.send("echo", "inside")
        assert (await c.recv_type("echo"))["p"] == "inside"
        await c.close()
        await ws.close()

    asyncio.run(main())


def test_plaintext_and_garbage_clients_are_refused_without_harm(make_server: Any, cert: tuple[str, str]) -> None:
    srv = make_server({"tls_cert_file": cert[0], "tls_key_file": cert[1]})

    async def main() -> None:
        ctx = client_ctx(cert[0])
        good, _ = await open_ready(srv.url, ssl=ctx)
        # A plain HTTP upgrade on the TLS port, and random bytes.
        for junk in (b"GET /wse HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(junk)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except (ConnectionResetError, socket.timeout):
                    pass
        await good.send(envelope("echo", "still fine"))
        assert (await recv_type(good, "echo"))["p"] == "still fine"
        st = (await stats(good))["engine"]
        assert st["tls_failures"] == 2
        await good.close()

    asyncio.run(main())


def test_bad_certificate_files_fail_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    code = (
        "import wse\n"
        f"app = wse.WSEApp(wse.WSEConfig(port=0, tls_cert_file={str(bad)!r}, tls_key_file={str(bad)!r}))\n"
        "app.run()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "tls_cert_file" in out.stderr and "no certificate" in out.stderr
