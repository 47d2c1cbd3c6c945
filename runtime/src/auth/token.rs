//! Finding the token in an upgrade request: cookie, `Authorization: Bearer`, or `?token=`.

use crate::config::JwtConfig;

/// Returns the token the request carries, looking in the configured places in a fixed order.
pub fn extract<'a>(
    cfg: &JwtConfig,
    cookie: Option<&'a str>,
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(auth) = authorization {
        let auth = auth.trim();
        // Compared as bytes: the header may hold multi-byte text, and byte 7 need not be a
        // char boundary (slicing the str there panicked).
        if auth.len() > 7 && auth.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(auth[7..].trim().into());
        }
    }
    if let Some(cookies) = cookie {
        for part in cookies.split(';') {
            if let Some((k, v)) = part.trim().split_once('=') {
                if k == cfg.cookie_name {
                    return Some(v.trim_matches('"').into());
                }
            }
        }
    }
    if cfg.query_param {
        if let Some(q) = query {
            for pair in q.split('&') {
                if let Some(("token", v)) = pair.split_once('=') {
                    return urlencoding::decode(v).ok();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let mut c = JwtConfig::default();
        assert_eq!(extract(&c, Some("a=1; access_token=abc"), None, None).unwrap(), "abc");
        assert_eq!(extract(&c, None, Some("Bearer xyz"), None).unwrap(), "xyz");
        assert!(extract(&c, None, None, Some("token=q")).is_none());
        c.query_param = true;
        assert_eq!(extract(&c, None, None, Some("format=json&token=a%2Eb")).unwrap(), "a.b");
        // Non-ASCII text across byte 7 of the header: no token, and no panic.
        assert!(extract(&c, None, Some("éééé xyz"), None).is_none());
        assert!(extract(&c, None, Some("Bearer é"), None).as_deref() == Some("é"));
        c.cookie_name = "jwt".into();
        assert!(extract(&c, Some("access_token=abc"), None, None).is_none());
    }
}
