//! JWT validation (HS256, RS256, ES256) with key rotation, done before Python hears of a connection.

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;

/// Why a token was refused; `reason()` is the label counted in metrics and shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    TooLarge,
    Malformed,
    Algorithm,
    UnknownKid,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::MissingClaim(_) => "missing_claim",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "AUTH_REQUIRED",
            _ => "AUTH_FAILED",
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "authentication token required".into(),
            AuthError::TooLarge => "token too large".into(),
            AuthError::Malformed => "malformed token".into(),
            AuthError::Algorithm => "token algorithm not accepted".into(),
            AuthError::UnknownKid => "unknown key id".into(),
            AuthError::Signature => "invalid token signature".into(),
            AuthError::Expired => "token expired".into(),
            AuthError::NotYetValid => "token not yet valid".into(),
            AuthError::Issuer => "invalid token issuer".into(),
            AuthError::Audience => "invalid token audience".into(),
            AuthError::MissingClaim(c) => format!("token lacks required claim '{c}'"),
        }
    }
}

struct Key {
    kid: Option<String>,
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
}

/// Verifies tokens against the current key and, during rotation, the previous one.
pub struct JwtVerifier {
    keys: Vec<Key>,
    /// The checks for a token of each enabled algorithm, built once (not per token).
    validations: Vec<(Algorithm, Validation)>,
    max_token_bytes: usize,
    /// Claims checked after the signature (`JwtConfig::required_claims`).
    required_claims: Vec<String>,
}

const MIN_HS_KEY: usize = 32;

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(format!("unsupported JWT algorithm {other:?} (HS256, RS256, ES256)")),
    }
}

fn public_key(pem: &str, algorithms: &[Algorithm]) -> Result<(DecodingKey, Algorithm), String> {
    let pem = pem.as_bytes();
    if algorithms.contains(&Algorithm::ES256) {
        if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            return Ok((k, Algorithm::ES256));
        }
    }
    if algorithms.contains(&Algorithm::RS256) {
        if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            return Ok((k, Algorithm::RS256));
        }
    }
    Err("public_key is not a PEM key for an enabled algorithm (RS256 or ES256)".into())
}

impl JwtVerifier {
    pub fn new(cfg: &JwtConfig) -> Result<Self, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| parse_alg(a))
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err("jwt.algorithms is empty".into());
        }
        let mut keys = Vec::new();
        for (secret, pem, kid) in [
            (&cfg.secret, &cfg.public_key, &cfg.kid),
            (&cfg.previous_secret, &cfg.previous_public_key, &cfg.previous_kid),
        ] {
            if secret.is_none() && pem.is_none() {
                continue;
            }
            let hmac = match secret {
                Some(s) => {
                    if s.len() < MIN_HS_KEY {
                        return Err(format!("HS256 secret must be at least {MIN_HS_KEY} bytes"));
                    }
                    if !algorithms.contains(&Algorithm::HS256) {
                        return Err("a secret is set but HS256 is not in jwt.algorithms".into());
                    }
                    Some(DecodingKey::from_secret(s.as_bytes()))
                }
                None => None,
            };
            let public = match pem {
                Some(p) => Some(public_key(p, &algorithms)?),
                None => None,
            };
            keys.push(Key { kid: kid.clone(), hmac, public });
        }
        if keys.is_empty() {
            return Err("jwt needs a secret or a public_key".into());
        }
        let mut base = Validation::new(algorithms[0]);
        base.leeway = cfg.leeway_secs;
        base.validate_exp = true;
        base.validate_nbf = true;
        // NOTE: the crate checks `aud`/`iss` only when present; a configured one must be required.
        let mut required = vec!["exp"];
        match &cfg.audience {
            Some(aud) if !aud.is_empty() => {
                base.set_audience(aud);
                required.push("aud");
            }
            _ => base.validate_aud = false,
        }
        if let Some(iss) = &cfg.issuer {
            base.set_issuer(&[iss]);
            required.push("iss");
        }
        base.set_required_spec_claims(&required);
        let required_claims = cfg.required_claims.clone();
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = base.clone();
                v.algorithms = vec![alg];
                (alg, v)
            })
            .collect();
        Ok(Self { keys, validations, max_token_bytes: cfg.max_token_bytes, required_claims })
    }

    /// Checks a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        // `alg: none` and unknown algorithms fail here: the crate has no such variant.
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let Some((_, v)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::Algorithm);
        };
        let mut last = AuthError::UnknownKid;
        for key in &self.keys {
            if let (Some(want), Some(got)) = (&key.kid, &header.kid) {
                if want != got {
                    continue;
                }
            }
            let dk = match header.alg {
                Algorithm::HS256 => key.hmac.as_ref(),
                alg => key.public.as_ref().filter(|(_, a)| *a == alg).map(|(k, _)| k),
            };
            let Some(dk) = dk else {
                last = AuthError::Algorithm;
                continue;
            };
            match decode::<Map<String, Value>>(token, dk, v) {
                Ok(data) => return self.check_required(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => AuthError::Signature,
                        K::ExpiredSignature => return Err(AuthError::Expired),
                        K::ImmatureSignature => return Err(AuthError::NotYetValid),
                        K::InvalidIssuer => return Err(AuthError::Issuer),
                        K::InvalidAudience => return Err(AuthError::Audience),
                        K::MissingRequiredClaim(c) => return Err(AuthError::MissingClaim(c.clone())),
                        K::InvalidAlgorithm => AuthError::Algorithm,
                        _ => AuthError::Malformed,
                    };
                }
            }
        }
        Err(last)
    }
}

impl JwtVerifier {
    /// A verified token must still carry every required claim: present, not null, and not an
    /// empty string (an anonymous `sub` would make an anonymous user).
    fn check_required(&self, claims: Map<String, Value>) -> Result<Map<String, Value>, AuthError> {
        for name in &self.required_claims {
            match claims.get(name) {
                None | Some(Value::Null) => return Err(AuthError::MissingClaim(name.clone())),
                Some(Value::String(s)) if s.is_empty() => return Err(AuthError::MissingClaim(name.clone())),
                Some(_) => {}
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const OLD: &str = "fedcba9876543210fedcba9876543210";

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(secret: &str, claims: Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(String::from);
        encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn cfg() -> JwtConfig {
        JwtConfig { secret: Some(SECRET.into()), ..Default::default() }
    }

    #[test]
    fn accepts_valid_and_returns_claims() {
        let v = JwtVerifier::new(&cfg()).unwrap();
        let c = v.verify(&token(SECRET, json!({"sub": "u1", "exp": now() + 60}), None)).unwrap();
        assert_eq!(c["sub"], "u1");
    }

    #[test]
    fn refuses_expired_bad_signature_missing_exp() {
        let v = JwtVerifier::new(&cfg()).unwrap();
        let t = token(SECRET, json!({"sub": "u1", "exp": now() - 120}), None);
        assert_eq!(v.verify(&t), Err(AuthError::Expired));
        let t = token(OLD, json!({"sub": "u1", "exp": now() + 60}), None);
        assert_eq!(v.verify(&t), Err(AuthError::Signature));
        let t = token(SECRET, json!({"sub": "u1"}), None);
        assert_eq!(v.verify(&t).unwrap_err().reason(), "missing_claim");
    }

    #[test]
    fn requires_sub_by_default_and_configured_claims() {
        let v = JwtVerifier::new(&cfg()).unwrap();
        for claims in [json!({"exp": now() + 60}), json!({"sub": "", "exp": now() + 60}), json!({"sub": null, "exp": now() + 60})] {
            let e = v.verify(&token(SECRET, claims, None)).unwrap_err();
            assert_eq!((e.reason(), e.message()), ("missing_claim", "token lacks required claim 'sub'".to_string()));
        }
        let c = JwtConfig { required_claims: vec!["sub".into(), "tenant".into()], ..cfg() };
        let v = JwtVerifier::new(&c).unwrap();
        let e = v.verify(&token(SECRET, json!({"sub": "u", "exp": now() + 60}), None)).unwrap_err();
        assert_eq!(e, AuthError::MissingClaim("tenant".into()));
        assert!(v.verify(&token(SECRET, json!({"sub": "u", "tenant": 7, "exp": now() + 60}), None)).is_ok());
        let c = JwtConfig { required_claims: vec![], ..cfg() };
        let v = JwtVerifier::new(&c).unwrap();
        assert!(v.verify(&token(SECRET, json!({"exp": now() + 60}), None)).is_ok());
    }

    #[test]
    fn refuses_alg_none_and_oversized() {
        let v = JwtVerifier::new(&cfg()).unwrap();
        // {"alg":"none","typ":"JWT"} . {"sub":"u1","exp":9999999999} .
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(v.verify(none), Err(AuthError::Malformed));
        let big = "a".repeat(9000);
        assert_eq!(v.verify(&big), Err(AuthError::TooLarge));
    }

    #[test]
    fn short_hs_key_is_a_config_error() {
        let c = JwtConfig { secret: Some("short".into()), ..Default::default() };
        assert!(JwtVerifier::new(&c).is_err());
    }

    #[test]
    fn rotation_accepts_previous_key_and_checks_kid() {
        let c = JwtConfig {
            secret: Some(SECRET.into()),
            kid: Some("k2".into()),
            previous_secret: Some(OLD.into()),
            previous_kid: Some("k1".into()),
            ..Default::default()
        };
        let v = JwtVerifier::new(&c).unwrap();
        let claims = json!({"sub": "u", "exp": now() + 60});
        assert!(v.verify(&token(OLD, claims.clone(), Some("k1"))).is_ok());
        assert!(v.verify(&token(SECRET, claims.clone(), Some("k2"))).is_ok());
        assert_eq!(v.verify(&token(SECRET, claims.clone(), Some("k9"))), Err(AuthError::UnknownKid));
        assert_eq!(v.verify(&token(OLD, claims, Some("k2"))), Err(AuthError::Signature));
    }

    #[test]
    fn audience_and_issuer() {
        let c = JwtConfig {
            secret: Some(SECRET.into()),
            audience: Some(vec!["wse".into()]),
            issuer: Some("auth".into()),
            ..Default::default()
        };
        let v = JwtVerifier::new(&c).unwrap();
        let ok = json!({"sub": "u", "exp": now() + 60, "aud": "wse", "iss": "auth"});
        assert!(v.verify(&token(SECRET, ok, None)).is_ok());
        let bad = json!({"sub": "u", "exp": now() + 60, "aud": "other", "iss": "auth"});
        assert_eq!(v.verify(&token(SECRET, bad, None)), Err(AuthError::Audience));
        let bad = json!({"sub": "u", "exp": now() + 60, "aud": "wse", "iss": "evil"});
        assert_eq!(v.verify(&token(SECRET, bad, None)), Err(AuthError::Issuer));
        let no_aud = json!({"sub": "u", "exp": now() + 60, "iss": "auth"});
        assert_eq!(v.verify(&token(SECRET, no_aud, None)).unwrap_err().reason(), "missing_claim");
        let no_iss = json!({"sub": "u", "exp": now() + 60, "aud": "wse"});
        assert_eq!(v.verify(&token(SECRET, no_iss, None)).unwrap_err().reason(), "missing_claim");
    }
}
