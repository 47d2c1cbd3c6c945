//! JWT verification input (`auth::jwt::JwtVerifier::verify`): whatever a client puts where the
//! token goes. The verifier holds an HS256 secret (the tests' own, so tokens captured from
//! their traffic verify while unexpired) and, as the rotation's previous key, an ES256 public
//! key with kid `ec1`. Both keys exist only for fuzzing.
//!
//! Properties:
//! - never panics; a token over `max_token_bytes` is refused as too large; an accepted token
//!   has three parts and the required `exp` claim;
//! - decode of encode is identity: claims built from the input, signed (HS256, or ES256 with
//!   the kid), verify and come back equal;
//! - any one-character change of a signed token is refused; so are `alg: none`, an expired
//!   token, and HS256 signed with the public key as the secret (algorithm confusion).
#![no_main]

use std::sync::LazyLock;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use wse_fuzz::{fields, json_eq, Rng};
use _runtime::auth::jwt::{AuthError, JwtVerifier};
use _runtime::config::JwtConfig;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgelnLl63wdVRf/1KT
gnhZrWXr8FOW0/LOBhOowTLFwB6hRANCAAR2BWVv5C8wmCBMo4FPH7PzDmNUOX3S
2kWKMMaCGH4AzGivSkFzY208rLJRHf9EpGoTrLwe7DtkXny1ZdVauOsO
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEdgVlb+QvMJggTKOBTx+z8w5jVDl9
0tpFijDGghh+AMxor0pBc2NtPKyyUR3/RKRqE6y8Huw7ZF58tWXVWrjrDg==
-----END PUBLIC KEY-----
";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static VERIFIER: LazyLock<(JwtVerifier, usize)> = LazyLock::new(|| {
    let cfg = JwtConfig {
        secret: Some(SECRET.into()),
        algorithms: vec!["HS256".into(), "ES256".into()],
        previous_public_key: Some(EC_PUBLIC.into()),
        previous_kid: Some("ec1".into()),
        ..Default::default()
    };
    (JwtVerifier::new(&cfg).expect("fuzz verifier config"), cfg.max_token_bytes)
});

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

static KEYS: LazyLock<(EncodingKey, EncodingKey)> = LazyLock::new(|| {
    (EncodingKey::from_secret(SECRET.as_bytes()), EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap())
});

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    let key = if alg == Algorithm::ES256 { &KEYS.1 } else { &KEYS.0 };
    encode(&h, claims, key).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let (v, max) = &*VERIFIER;
    // Anything at all where the token goes.
    let text = String::from_utf8_lossy(data);
    match v.verify(&text) {
        Ok(claims) => {
            assert_eq!(text.split('.').count(), 3);
            assert!(claims.get("exp").is_some_and(Value::is_number), "accepted without exp");
        }
        Err(e) => {
            if text.len() > *max {
                assert_eq!(e, AuthError::TooLarge);
            }
        }
    }

    // Claims made of the input, signed, verified, compared.
    let mut rng = Rng::from_data(data);
    let f = fields(data, 0, 2);
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(String::from_utf8_lossy(f[0]).into()));
    claims.insert("exp".into(), json!(now() + 3600));
    if let Ok(x) = serde_json::from_slice::<Value>(f[1]) {
        claims.insert("x".into(), x);
    }
    let claims = Value::Object(claims);
    // ES256 (P-256 in pure Rust, slow under coverage instrumentation) on one run in 256.
    let es = rng.below(256) == 0;
    let tok = if es { sign(Algorithm::ES256, Some("ec1"), &claims) } else { sign(Algorithm::HS256, None, &claims) };
    if tok.len() > *max {
        assert_eq!(v.verify(&tok), Err(AuthError::TooLarge));
        return;
    }
    if f[0].is_empty() {
        // `sub` is required by default, and an empty one counts as missing.
        assert!(matches!(v.verify(&tok), Err(AuthError::MissingClaim(_))), "a token with an empty sub is accepted");
        return;
    }
    let back = v.verify(&tok).unwrap_or_else(|e| panic!("a token we signed is refused: {e:?}"));
    assert!(json_eq(&Value::Object(back), &claims), "claims changed on the way");

    // One character changed: refused.
    let mut t = tok.clone().into_bytes();
    let i = rng.below(t.len());
    if t[i] != b'.' {
        let c = B64URL[rng.below(B64URL.len())];
        t[i] = if c == t[i] { if c == b'A' { b'B' } else { b'A' } } else { c };
        let t = String::from_utf8(t).unwrap();
        assert!(v.verify(&t).is_err(), "a tampered token verifies");
    }
    // Expired, alg none, and HS256 keyed with the public key.
    let mut old = claims.clone();
    old["exp"] = json!(now().saturating_sub(86_400));
    assert_eq!(v.verify(&sign(Algorithm::HS256, None, &old)), Err(AuthError::Expired));
    let parts: Vec<&str> = tok.split('.').collect();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    assert!(v.verify(&none).is_err(), "alg none accepted");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("ec1".into());
    let confused = encode(&h, &claims, &EncodingKey::from_secret(EC_PUBLIC.as_bytes())).unwrap();
    assert!(v.verify(&confused).is_err(), "HS256 keyed with the public key accepted");
});
