"""JWT in the handshake: which tokens get in, which are refused and how.

Tokens are made with PyJWT (and keys with ``cryptography``), an implementation independent of
the engine's. A refused token must never reach Python: the client is upgraded, gets one
``error`` envelope (``AUTH_FAILED`` or ``AUTH_REQUIRED``) and a close frame with code 4401 whose
reason is a short label; ``on_connect`` does not run; the engine counts the refusal.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import jwt as pyjwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import SECRET, ServerProc, make_token
from tests.wsutil import AUTH_COUNTERS, open_ready, recv_json, stats

OTHER_SECRET = "another-secret-fedcba9876543210-fedcba98"
OLD_SECRET = "old-secret-0000000000000000000000000000000"


def _pem_pair(key: Any) -> tuple[bytes, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


RSA_PRIVATE, RSA_PUBLIC = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
RSA_OTHER_PRIVATE, _ = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PRIVATE, EC_PUBLIC = _pem_pair(ec.generate_private_key(ec.SECP256R1()))


def signed(claims: dict[str, Any] | None, key: Any, alg: str, exp_in: int | None = 300, **header: Any) -> str:
    body: dict[str, Any] = {"sub": "user-1"}
    if exp_in is not None:
        body["exp"] = int(time.time()) + exp_in
    body.update(claims or {})
    return pyjwt.encode(body, key, algorithm=alg, headers=header or None)


def alg_none_token() -> str:
    """A hand-built unsigned token: ``{"alg":"none"}``, valid claims, empty signature."""

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(d)).rstrip(b"=").decode()

    return b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "mallory", "exp": int(time.time()) + 300}) + "."


def cookie(tok: str, name: str = "access_token") -> dict[str, str]:
    return {"Cookie": f"theme=dark; {name}={tok}"}


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def _refusal(url: str, headers: dict[str, str] | None) -> tuple[dict[str, Any], int, str, list[Any]]:
    """Connects expecting a refusal: returns the error envelope, close code and reason, and anything else received."""
    async with connect(url, additional_headers=headers) as ws:
        err = await recv_json(ws)
        assert err.get("t") != "server_ready", f"the token was accepted (expected a refusal): {err}"
        extra: list[Any] = []
        with pytest.raises(ConnectionClosed) as ei:
            while True:
                extra.append(await asyncio.wait_for(ws.recv(), 5))
        rcvd = ei.value.rcvd
        assert rcvd is not None, "the server closed without a close frame"
        return err, rcvd.code, rcvd.reason, extra


async def _accepted(url: str, headers: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Connects expecting acceptance: returns server_ready's details and the app's stats."""
    ws, ready = await open_ready(url, additional_headers=headers)
    try:
        return ready["p"]["details"], await stats(ws)
    finally:
        await ws.close()


def check_refused(
    srv: ServerProc,
    bad: dict[str, str] | None,
    good: dict[str, str] | None,
    *,
    code: str,
    reason: str | tuple[str, ...],
    counter: str,
    path_suffix: str = "",
) -> dict[str, Any]:
    """The refused attempt, then one accepted client that reads the stats. Returns the error envelope."""

    async def main() -> tuple[dict[str, Any], int, str, list[Any], dict[str, Any]]:
        err, close_code, close_reason, extra = await _refusal(srv.url + path_suffix, bad)
        _, st = await _accepted(srv.url, good)
        return err, close_code, close_reason, extra, st

    err, close_code, close_reason, extra, st = asyncio.run(main())
    assert err["c"] == "WSE" and err["t"] == "error", err
    assert err["p"]["code"] == code, err
    assert isinstance(err["p"].get("message"), str) and err["p"]["message"]
    assert close_code == 4401, (close_code, close_reason)
    reasons = (reason,) if isinstance(reason, str) else reason
    assert close_reason in reasons, (close_reason, err)
    assert extra == [], f"a refused client got more than the error: {extra}"
    record, engine = st["record"], st["engine"]
    # Only the accepted stats client ever reached Python.
    assert record["connects"] == 1, record
    assert len(record["users"]) == 1, record["users"]
    assert engine["handshakes_ok"] == 1, engine
    assert engine[counter] == 1, {k: engine[k] for k in AUTH_COUNTERS}
    for other in AUTH_COUNTERS:
        if other != counter:
            assert engine[other] == 0, {k: engine[k] for k in AUTH_COUNTERS}
    return err


def check_accepted(srv: ServerProc, headers: dict[str, str] | None, *, sub: str | None, path_suffix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """One accepted connection: its user id reached server_ready and Python. Returns (claims seen by Python, engine)."""
    details, st = asyncio.run(_accepted(srv.url + path_suffix, headers))
    assert details["user_id"] == sub, details
    record, engine = st["record"], st["engine"]
    assert record["connects"] == 1 and len(record["users"]) == 1, record
    user_id, claims = record["users"][0]
    assert user_id == sub
    assert engine["handshakes_ok"] == 1
    assert all(engine[k] == 0 for k in AUTH_COUNTERS), engine
    return claims, engine


HS = {"secret": SECRET}


# ---- where the token comes from -------------------------------------------------------------------


def test_cookie_token_and_configured_claims_reach_python(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "claims": ["role", "tenant"]}})
    tok = make_token({"sub": "alice", "role": "admin", "tenant": "acme", "email": "a@example.com"})
    claims, _ = check_accepted(srv, cookie(tok), sub="alice")
    # Only `sub` and the configured claims are handed over.
    assert claims == {"sub": "alice", "role": "admin", "tenant": "acme"}


def test_bearer_token_passes_all_claims_when_none_configured(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    tok = make_token({"sub": "bob", "role": "viewer", "n": [1, 2]})
    claims, _ = check_accepted(srv, bearer(tok), sub="bob")
    assert claims["sub"] == "bob" and claims["role"] == "viewer" and claims["n"] == [1, 2]
    assert isinstance(claims["exp"], int)


def test_numeric_sub_becomes_a_string_user_id(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "claims": ["sub"]}})
    tok = pyjwt.encode({"sub": 42, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    claims, _ = check_accepted(srv, bearer(tok), sub="42")
    assert claims == {"sub": 42}


def test_query_param_token_when_enabled(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "query_param": True}})
    tok = make_token({"sub": "carol"})
    check_accepted(srv, None, sub="carol", path_suffix=f"?format=json&token={tok}")


def test_query_param_token_refused_when_disabled(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    tok = make_token({"sub": "carol"})
    check_refused(
        srv, None, cookie(make_token()), code="AUTH_REQUIRED", reason="missing", counter="auth_missing",
        path_suffix=f"?token={tok}",
    )


def test_custom_cookie_name(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "cookie_name": "session_jwt"}})
    check_accepted(srv, cookie(make_token({"sub": "dave"}), "session_jwt"), sub="dave")


def test_default_cookie_name_ignored_when_custom_configured(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "cookie_name": "session_jwt"}})
    check_refused(
        srv, cookie(make_token()), cookie(make_token(), "session_jwt"),
        code="AUTH_REQUIRED", reason="missing", counter="auth_missing",
    )


def test_missing_token_is_auth_required(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    err = check_refused(srv, None, cookie(make_token()), code="AUTH_REQUIRED", reason="missing", counter="auth_missing")
    assert "required" in err["p"]["message"]


def test_anonymous_allowed_when_not_required(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "required": False}})
    claims, _ = check_accepted(srv, None, sub=None)
    assert claims == {}


def test_bad_token_refused_even_when_not_required(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "required": False}})
    check_refused(
        srv, cookie(make_token(secret=OTHER_SECRET)), None, code="AUTH_FAILED", reason="signature", counter="auth_failed"
    )


# ---- time claims ------------------------------------------------------------------------------------


def test_expired_beyond_leeway(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    err = check_refused(
        srv, cookie(make_token(exp_in=-120)), cookie(make_token()), code="AUTH_FAILED", reason="expired", counter="auth_expired"
    )
    assert "expired" in err["p"]["message"]


def test_expired_within_leeway_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": HS})  # leeway 30 s by default
    check_accepted(srv, cookie(make_token({"sub": "late"}, exp_in=-10)), sub="late")


def test_leeway_is_configurable(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "leeway_secs": 0}})
    check_refused(
        srv, cookie(make_token(exp_in=-10)), cookie(make_token()), code="AUTH_FAILED", reason="expired", counter="auth_expired"
    )


def test_nbf_in_the_future(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    tok = make_token({"nbf": int(time.time()) + 300})
    check_refused(srv, cookie(tok), cookie(make_token()), code="AUTH_FAILED", reason="not_yet_valid", counter="auth_failed")


def test_missing_exp(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    tok = pyjwt.encode({"sub": "forever"}, SECRET, algorithm="HS256")
    err = check_refused(srv, cookie(tok), cookie(make_token()), code="AUTH_FAILED", reason="missing_claim", counter="auth_failed")
    assert "exp" in err["p"]["message"]


# ---- signature, algorithm, size ------------------------------------------------------------------


def test_bad_signature(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    check_refused(
        srv, bearer(make_token(secret=OTHER_SECRET)), bearer(make_token()), code="AUTH_FAILED", reason="signature", counter="auth_failed"
    )


def test_tampered_payload(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    h, _, s = make_token({"sub": "user-1"}).split(".")
    forged = base64.urlsafe_b64encode(orjson.dumps({"sub": "admin", "exp": int(time.time()) + 300})).rstrip(b"=").decode()
    check_refused(srv, bearer(f"{h}.{forged}.{s}"), bearer(make_token()), code="AUTH_FAILED", reason="signature", counter="auth_failed")


def test_alg_none(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    check_refused(
        srv, bearer(alg_none_token()), bearer(make_token()), code="AUTH_FAILED", reason=("malformed", "algorithm"), counter="auth_failed"
    )


def test_garbage_token(make_server: Any) -> None:
    srv = make_server({"jwt": HS})
    check_refused(srv, cookie("not.a.jwt"), cookie(make_token()), code="AUTH_FAILED", reason="malformed", counter="auth_failed")


def test_oversized_token(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "max_token_bytes": 1024}})
    big = make_token({"pad": "x" * 2000})  # correctly signed, just too big
    assert len(big) > 1024
    check_refused(srv, cookie(big), cookie(make_token()), code="AUTH_FAILED", reason="too_large", counter="auth_failed")


def test_token_just_under_size_limit_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": {**HS, "max_token_bytes": 4096}})
    tok = make_token({"sub": "padded", "pad": "x" * 2000})
    assert 2000 < len(tok) <= 4096
    check_accepted(srv, cookie(tok), sub="padded")


# ---- audience and issuer -----------------------------------------------------------------------


AUD = {**HS, "audience": ["wse-api"]}
ISS = {**HS, "issuer": "https://auth.example"}


def test_audience_match_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": AUD})
    check_accepted(srv, cookie(make_token({"sub": "aud-ok", "aud": "wse-api"})), sub="aud-ok")


def test_wrong_audience(make_server: Any) -> None:
    srv = make_server({"jwt": AUD})
    check_refused(
        srv, cookie(make_token({"aud": "billing"})), cookie(make_token({"aud": "wse-api"})),
        code="AUTH_FAILED", reason="audience", counter="auth_failed",
    )


def test_missing_audience_when_configured(make_server: Any) -> None:
    srv = make_server({"jwt": AUD})
    check_refused(
        srv, cookie(make_token()), cookie(make_token({"aud": "wse-api"})),
        code="AUTH_FAILED", reason=("missing_claim", "audience"), counter="auth_failed",
    )


def test_wrong_issuer(make_server: Any) -> None:
    srv = make_server({"jwt": ISS})
    check_refused(
        srv, cookie(make_token({"iss": "https://evil.example"})), cookie(make_token({"iss": "https://auth.example"})),
        code="AUTH_FAILED", reason="issuer", counter="auth_failed",
    )


def test_missing_issuer_when_configured(make_server: Any) -> None:
    srv = make_server({"jwt": ISS})
    check_refused(
        srv, cookie(make_token()), cookie(make_token({"iss": "https://auth.example"})),
        code="AUTH_FAILED", reason=("missing_claim", "issuer"), counter="auth_failed",
    )


# ---- key rotation ---------------------------------------------------------------------------------


ROT = {**HS, "kid": "k2", "previous_secret": OLD_SECRET, "previous_kid": "k1"}


def test_rotation_previous_key_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": ROT})
    check_accepted(srv, cookie(make_token({"sub": "old-key"}, secret=OLD_SECRET, kid="k1")), sub="old-key")


def test_rotation_current_key_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": ROT})
    check_accepted(srv, cookie(make_token({"sub": "new-key"}, kid="k2")), sub="new-key")


def test_rotation_unknown_kid(make_server: Any) -> None:
    srv = make_server({"jwt": ROT})
    check_refused(
        srv, cookie(make_token(kid="k9")), cookie(make_token(kid="k2")), code="AUTH_FAILED", reason="unknown_kid", counter="auth_failed"
    )


def test_rotation_kid_of_one_key_signed_with_the_other(make_server: Any) -> None:
    srv = make_server({"jwt": ROT})
    check_refused(
        srv, cookie(make_token(secret=OLD_SECRET, kid="k2")), cookie(make_token(kid="k2")),
        code="AUTH_FAILED", reason="signature", counter="auth_failed",
    )


# ---- public-key algorithms -----------------------------------------------------------------------


RS = {"public_key": RSA_PUBLIC, "algorithms": ["RS256"]}
ES = {"public_key": EC_PUBLIC, "algorithms": ["ES256"]}


def test_rs256_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": {**RS, "claims": ["scope"]}})
    claims, _ = check_accepted(srv, bearer(signed({"sub": "rsa-user", "scope": "read"}, RSA_PRIVATE, "RS256")), sub="rsa-user")
    assert claims == {"sub": "rsa-user", "scope": "read"}


def test_rs256_wrong_key(make_server: Any) -> None:
    srv = make_server({"jwt": RS})
    check_refused(
        srv, bearer(signed(None, RSA_OTHER_PRIVATE, "RS256")), bearer(signed(None, RSA_PRIVATE, "RS256")),
        code="AUTH_FAILED", reason="signature", counter="auth_failed",
    )


def test_es256_accepted(make_server: Any) -> None:
    srv = make_server({"jwt": ES})
    check_accepted(srv, cookie(signed({"sub": "ec-user"}, EC_PRIVATE, "ES256")), sub="ec-user")


def test_hs256_refused_when_only_rs256_allowed(make_server: Any) -> None:
    srv = make_server({"jwt": RS})
    check_refused(
        srv, bearer(make_token()), bearer(signed(None, RSA_PRIVATE, "RS256")), code="AUTH_FAILED", reason="algorithm", counter="auth_failed"
    )


def test_hs256_signed_with_public_key_pem_refused(make_server: Any) -> None:
    """Algorithm confusion: an HS256 token keyed with the RSA public key PEM must not pass."""
    srv = make_server({"jwt": RS})
    # PyJWT refuses to HMAC with a PEM key, so sign by hand.
    import hashlib
    import hmac

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = b64(orjson.dumps({"sub": "confused", "exp": int(time.time()) + 300}))
    sig = b64(hmac.new(RSA_PUBLIC.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    check_refused(
        srv, bearer(f"{head}.{body}.{sig}"), bearer(signed(None, RSA_PRIVATE, "RS256")),
        code="AUTH_FAILED", reason="algorithm", counter="auth_failed",
    )


def test_es256_token_refused_when_only_rs256_allowed(make_server: Any) -> None:
    srv = make_server({"jwt": RS})
    check_refused(
        srv, bearer(signed(None, EC_PRIVATE, "ES256")), bearer(signed(None, RSA_PRIVATE, "RS256")),
        code="AUTH_FAILED", reason="algorithm", counter="auth_failed",
    )


# ---- configuration errors ---------------------------------------------------------------------------


def _start_failure(make_server: Any, config: dict[str, Any]) -> str:
    """Starts a server expected not to start; returns the error."""
    with pytest.raises(RuntimeError) as ei:
        make_server(config)
    return str(ei.value)


def test_short_hs_secret_refuses_to_start(make_server: Any) -> None:
    error = _start_failure(make_server, {"jwt": {"secret": "too-short-secret"}})
    assert "secret" in error
    assert "32" in error


def test_bad_public_key_refuses_to_start(make_server: Any) -> None:
    error = _start_failure(
        make_server, {"jwt": {"public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "algorithms": ["RS256"]}}
    )
    assert "public_key" in error


# ---- several refusals and acceptances on one server ----------------------------------------------


def test_mixed_traffic_counts(make_server: Any) -> None:
    """Three refusals of different kinds and three accepted users: Python sees exactly the three."""
    srv = make_server({"jwt": {**HS, "claims": ["n"]}})

    async def main() -> dict[str, Any]:
        bad: list[dict[str, str] | None] = [None, cookie(make_token(exp_in=-600)), bearer(make_token(secret=OTHER_SECRET))]
        for b in bad:
            _, code, _, _ = await _refusal(srv.url, b)
            assert code == 4401
        conns = []
        for i in range(3):
            ws, ready = await open_ready(srv.url, additional_headers=cookie(make_token({"sub": f"u{i}", "n": i})))
            assert ready["p"]["details"]["user_id"] == f"u{i}"
            conns.append(ws)
        st = await stats(conns[-1])
        for ws in conns:
            await ws.close()
        return st

    st = asyncio.run(main())
    assert st["record"]["connects"] == 3
    users = sorted(st["record"]["users"], key=lambda u: u[0])
    assert users == [["u0", {"sub": "u0", "n": 0}], ["u1", {"sub": "u1", "n": 1}], ["u2", {"sub": "u2", "n": 2}]]
    e = st["engine"]
    assert (e["auth_missing"], e["auth_expired"], e["auth_failed"], e["handshakes_ok"]) == (1, 1, 1, 3)

