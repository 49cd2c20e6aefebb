"""The worker logs in to NATS with each method an operator uses, and never shows a secret.

Every method runs against a real nats-server that requires it: user and password, token, nkey, a `.creds` file
(operator mode, keys and JWTs made here), and TLS with client certificates (a CA made here). Each is configured
both in the config file's `nats:` section and through the `IF_GOVERNOR_NATS_*` environment variables.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schemas.config import Config
from tests.factories import make_config, swarm_entry
from tests.integration.helpers import serve
from worker.client import GovernorClient
from worker.ops.cli import main as governor_cli
from worker.ops.natsserver import NatsServer
from worker.service.config import connect_options, load_config

START_TIMEOUT = 20.0
SWARM = swarm_entry(
    "sip", ["integration:sip"], cost_per_hour=5.0, reputation_score=0.9, initial_budget=25.0, model="sonnet"
)
#: The documented environment variable of each `nats:` key.
ENV_NAMES = {
    "creds": "IF_GOVERNOR_NATS_CREDS",
    "nkey_seed": "IF_GOVERNOR_NATS_NKEY",
    "user": "IF_GOVERNOR_NATS_USER",
    "password": "IF_GOVERNOR_NATS_PASSWORD",
    "token": "IF_GOVERNOR_NATS_TOKEN",
    "tls_ca": "IF_GOVERNOR_NATS_TLS_CA",
    "tls_cert": "IF_GOVERNOR_NATS_TLS_CERT",
    "tls_key": "IF_GOVERNOR_NATS_TLS_KEY",
}


@dataclass
class Auth:
    """A server configuration that requires one login method, and the client settings that satisfy it."""

    server_conf: str
    nats: dict[str, str]
    """The worker's `nats:` keys (without `servers`)."""
    secrets: list[str]
    """Strings that must never appear in a log line or an error message."""


# -- key and certificate material, made in the test --------------------------------------------------------------


def new_nkey(prefix: int) -> nkeys.KeyPair:
    """A fresh nkey pair of the given role (`nkeys.PREFIX_BYTE_USER`, `..._ACCOUNT`, `..._OPERATOR`)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_jwt(signer: nkeys.KeyPair, subject: nkeys.KeyPair, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) for `subject`, issued and signed (ed25519) by `signer`."""
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = {
        "jti": secrets.token_hex(16).upper(),
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject.public_key.decode(),
        "nats": {**claims, "version": 2},
    }
    payload = _b64url(json.dumps(body).encode())
    signature = _b64url(signer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
    return str(path)


def _pem_body(path: Path) -> str:
    """The base64 lines of a PEM file, joined: what a leak of the key would show."""
    return "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))


# -- one Auth per method ------------------------------------------------------------------------------------------


def user_password(tmp_path: Path) -> Auth:
    password = f"pw-{secrets.token_urlsafe(18)}"
    conf = f'authorization {{\n  user: governor\n  password: "{password}"\n}}\n'
    return Auth(conf, {"user": "governor", "password": password}, [password])


def token(tmp_path: Path) -> Auth:
    value = f"tk-{secrets.token_urlsafe(24)}"
    return Auth(f'authorization {{\n  token: "{value}"\n}}\n', {"token": value}, [value])


def nkey(tmp_path: Path) -> Auth:
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "governor.nk"
    seed_file.write_bytes(user.seed + b"\n")
    seed_file.chmod(0o600)
    conf = f"authorization {{\n  users = [{{nkey: {user.public_key.decode()}}}]\n}}\n"
    return Auth(conf, {"nkey_seed": str(seed_file)}, [user.seed.decode()])


def creds(tmp_path: Path) -> Auth:
    """Operator mode: operator, system account and account JWTs preloaded in a memory resolver; a user `.creds`."""
    operator = new_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    system = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    account = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    operator_jwt = signed_jwt(operator, operator, "test-operator", {"type": "operator"})
    system_jwt = signed_jwt(operator, system, "SYS", {"type": "account"})
    account_jwt = signed_jwt(operator, account, "governance", {"type": "account", "limits": UNLIMITED_ACCOUNT})
    user_jwt = signed_jwt(
        account, user, "governor", {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    )
    creds_file = tmp_path / "governor.creds"
    creds_file.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    creds_file.chmod(0o600)
    conf = (
        f"operator: {operator_jwt}\n"
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {system.public_key.decode()}: {system_jwt}\n"
        f"  {account.public_key.decode()}: {account_jwt}\n"
        "}\n"
    )
    return Auth(conf, {"creds": str(creds_file)}, [user.seed.decode()])


def tls(tmp_path: Path) -> Auth:
    """Mutual TLS: the server verifies the client's certificate against a CA made here, and the client the server's."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("if-governor test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", server_key, issuer, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("governor", client_key, issuer, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_file = _write_pem(tmp_path / "ca.pem", ca)
    server_file = _write_pem(tmp_path / "server.pem", server, server_key)
    client_file = _write_pem(tmp_path / "client.pem", client, client_key)
    conf = (
        "tls {\n"
        f"  cert_file: {json.dumps(server_file)}\n"
        f"  key_file: {json.dumps(str(tmp_path / 'server.key'))}\n"
        f"  ca_file: {json.dumps(ca_file)}\n"
        "  verify: true\n"
        "}\n"
    )
    settings = {"tls_ca": ca_file, "tls_cert": client_file, "tls_key": str(tmp_path / "client.key")}
    return Auth(conf, settings, [_pem_body(tmp_path / "client.key")])


METHODS: dict[str, Callable[[Path], Auth]] = {
    "user_password": user_password,
    "token": token,
    "nkey": nkey,
    "creds": creds,
    "tls": tls,
}


@dataclass
class Secured:
    """A nats-server that requires one login method."""

    server: NatsServer
    auth: Auth


def start_secured(tmp_path: Path, method: str) -> Secured:
    auth = METHODS[method](tmp_path)
    conf = tmp_path / "nats-server.conf"
    conf.write_text(auth.server_conf)
    server = NatsServer(store_dir=tmp_path / "nats", config_file=conf)
    server.start()
    return Secured(server, auth)


@pytest.fixture
def secured(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Secured]:
    """A nats-server requiring the method named by the test's `method` parameter; stopped after the test."""
    running = start_secured(tmp_path, request.param)
    try:
        yield running
    finally:
        running.server.stop()


def config_from_file(tmp_path: Path, url: str, nats_keys: dict[str, Any]) -> Config:
    """The worker's config, credentials in the file's `nats:` section, read by `load_config` with no environment."""
    path = tmp_path / "governor.yaml"
    raw = {"nats": {"servers": [url], **nats_keys}, "metrics": {"port": 0}, "swarms": [SWARM]}
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, env={})


def config_from_env(tmp_path: Path, url: str, nats_keys: dict[str, Any]) -> Config:
    """The worker's config, credentials and URL in `IF_GOVERNOR_NATS_*` variables; the file has none."""
    path = tmp_path / "governor.yaml"
    path.write_text(yaml.safe_dump({"metrics": {"port": 0}, "swarms": [SWARM]}))
    env = {ENV_NAMES[key]: value for key, value in nats_keys.items()}
    env["IF_GOVERNOR_NATS_URL"] = url
    return load_config(path, env=env)


SOURCES = {"file": config_from_file, "env": config_from_env}


async def refuses_anonymous(url: str) -> bool:
    """True when a connection with no credentials (and no client certificate) is refused."""
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    except Exception:
        return True
    await nc.close()
    return False


class TestLogin:
    @pytest.mark.parametrize("source", sorted(SOURCES))
    @pytest.mark.parametrize("secured", sorted(METHODS), indirect=True)
    async def test_worker_serves_with_each_login_method(
        self, secured: Secured, source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The worker logs in, writes its ledger and serves a client logged in the same way; no secret is logged."""
        caplog.set_level(logging.DEBUG)
        url = secured.server.url
        assert await refuses_anonymous(url)
        config = SOURCES[source](tmp_path, url, secured.auth.nats)
        assert {k: getattr(config.nats, k) for k in secured.auth.nats} == secured.auth.nats
        worker = await serve(config, timeout=START_TIMEOUT)
        try:
            async with await GovernorClient.connect(url, **connect_options(config.nats)) as client:
                cost = await client.cost("sip", "sip_integration", 2.5)
                status = await client.status()
            assert (cost.remaining, status.budgets) == (22.5, {"sip": 22.5})
        finally:
            await worker.__aexit__(None, None, None)
        assert worker.state == "stopped"
        assert "serving governor.*" in caplog.text
        for secret in secured.auth.secrets:
            assert secret not in caplog.text


def _wrong_password_config(url: str) -> Config:
    return make_config(
        nats={"servers": [url], "user": "governor", "password": WRONG_PASSWORD, "connect_timeout_s": 1.5}
    )


WRONG_PASSWORD = "wrong-" + "s3cr3t" * 4


def _error_text(exc: BaseException) -> str:
    """Everything an exception would show: its message, repr and the chain behind it."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


class TestSecretsStayOut:
    @pytest.mark.parametrize("secured", ["user_password"], indirect=True)
    async def test_wrong_password_fails_without_naming_a_password(
        self, secured: Secured, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A refused login ends the start with an error naming the server, not the password tried or the right one."""
        caplog.set_level(logging.DEBUG)
        url = secured.server.url
        with pytest.raises(ConnectionError) as raised:
            await serve(_wrong_password_config(url), timeout=START_TIMEOUT)
        assert str(raised.value) == f"cannot reach NATS at {url} within 1.5s"
        shown = _error_text(raised.value) + caplog.text
        assert "Authorization Violation" in caplog.text
        for secret in (WRONG_PASSWORD, *secured.auth.secrets):
            assert secret not in shown

    @pytest.mark.parametrize("secured", ["user_password"], indirect=True)
    async def test_password_in_the_url_is_redacted(self, secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
        """A password given in the URL's user-info is replaced by `***` in the error and absent from the logs."""
        caplog.set_level(logging.DEBUG)
        port = secured.server.port
        url = f"nats://governor:{WRONG_PASSWORD}@127.0.0.1:{port}"
        config = make_config(nats={"servers": [url], "connect_timeout_s": 1.5})
        with pytest.raises(ConnectionError) as raised:
            await serve(config, timeout=START_TIMEOUT)
        assert str(raised.value) == f"cannot reach NATS at nats://***@127.0.0.1:{port} within 1.5s"
        assert WRONG_PASSWORD not in _error_text(raised.value) + caplog.text

    @pytest.mark.parametrize("secured", ["token"], indirect=True)
    async def test_wrong_token_fails_without_naming_a_token(
        self, secured: Secured, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A refused token ends the start with an error that shows neither the token tried nor the right one."""
        caplog.set_level(logging.DEBUG)
        wrong = "tk-" + "n0t-the-t0ken" * 3
        config = make_config(nats={"servers": [secured.server.url], "token": wrong, "connect_timeout_s": 1.5})
        with pytest.raises(ConnectionError) as raised:
            await serve(config, timeout=START_TIMEOUT)
        for secret in (wrong, *secured.auth.secrets):
            assert secret not in _error_text(raised.value) + caplog.text

    def test_cli_wrong_password_error_names_no_password(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`governor status` with a wrong IF_GOVERNOR_NATS_PASSWORD prints one error line without the password."""
        running = start_secured(tmp_path, "user_password")
        try:
            monkeypatch.setenv("IF_GOVERNOR_NATS_USER", "governor")
            monkeypatch.setenv("IF_GOVERNOR_NATS_PASSWORD", WRONG_PASSWORD)
            code = governor_cli(["status", "--nats-url", running.server.url, "--timeout", "2"])
        finally:
            running.server.stop()
        out, err = capsys.readouterr()
        assert code == 1
        assert err.startswith(f"error: cannot connect to {running.server.url}: ")
        assert len(err.splitlines()) == 1
        for secret in (WRONG_PASSWORD, *running.auth.secrets):
            assert secret not in out + err
