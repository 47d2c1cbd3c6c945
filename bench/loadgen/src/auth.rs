//! JWT tokens: given on the command line, or minted here (HS256) from a shared secret.

use serde_json::{json, Value};

/// Mint an HS256 token with `sub`, `iat`, `exp` (now + `ttl_s`) and any `extra` claims
/// (a JSON object; its keys override the defaults).
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    ttl_s: u64,
    extra: Option<&str>,
) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = json!({"sub": sub, "iat": now, "exp": now + ttl_s});
    if let Some(extra) = extra {
        let v: Value = serde_json::from_str(extra).map_err(|e| format!("--jwt-claims: {e}"))?;
        let Value::Object(m) = v else {
            return Err("--jwt-claims must be a JSON object".into());
        };
        for (k, v) in m {
            claims[k] = v;
        }
    }
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("minting the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies() {
        let secret = "0123456789abcdef0123456789abcdef";
        let tok = mint_hs256(secret, "user-7", 60, Some(r#"{"aud":"wse"}"#)).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&["wse"]);
        let d = jsonwebtoken::decode::<Value>(
            &tok,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["sub"], "user-7");
    }
}
