//! Token extraction from an upgrade request (`auth::token::extract`): `Authorization: Bearer`,
//! the cookie, and `?token=` (percent-decoded).
//!
//! The input is four fields separated by newlines: Authorization, Cookie, query string, cookie
//! name (bytes that are not UTF-8 become U+FFFD, so multi-byte text is common).
//!
//! Properties:
//! - never panics; a token from a header is a substring of that header;
//! - a token placed in each source comes back as it was (decode of encode), whatever noise
//!   surrounds it: `Bearer <t>`, `<name>=<t>` among other cookies, `token=<percent-encoded t>`;
//! - the order is fixed: Authorization, then cookie, then query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wse_fuzz::fields;
use _runtime::auth::token::extract;
use _runtime::config::JwtConfig;

/// Characters a JWT is made of (base64url and the dots).
fn jwt_like(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect()
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data, b'\n', 4);
    let auth = String::from_utf8_lossy(f[0]);
    let cookie = String::from_utf8_lossy(f[1]);
    let query = String::from_utf8_lossy(f[2]);
    let name = String::from_utf8_lossy(f[3]);
    let mut cfg = JwtConfig { query_param: data.len() % 2 == 0, ..Default::default() };
    if !name.is_empty() {
        cfg.cookie_name = name.to_string();
    }

    // Arbitrary headers: no panic, and header tokens are substrings of their header.
    if let Some(t) = extract(&cfg, None, Some(&auth), None) {
        assert!(auth.contains(t.as_ref()));
    }
    if let Some(t) = extract(&cfg, Some(&cookie), None, None) {
        assert!(cookie.contains(t.as_ref()));
    }
    let _ = extract(&cfg, Some(&cookie), Some(&auth), Some(&query));

    // Round trips: a token put in each place comes back whole.
    let tok = jwt_like(&auth);
    if !tok.is_empty() {
        let header = format!("  Bearer {tok} ");
        assert_eq!(extract(&cfg, Some(&cookie), Some(&header), Some(&query)).as_deref(), Some(tok.as_str()));
        let header = format!("bEaReR {tok}");
        assert_eq!(extract(&cfg, None, Some(&header), None).as_deref(), Some(tok.as_str()));
        // Cookie pairs before ours that do not use our name (no ';' or '=' inside them).
        let cname = cfg.cookie_name.clone();
        let cname_ok = !cname.contains([';', '=']) && cname.trim() == cname && !cname.is_empty();
        if cname_ok {
            let others: String = cookie
                .split(';')
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| k.trim() != cname)
                .map(|(k, v)| format!("{}={}; ", k.trim(), v.trim()))
                .collect();
            let jar = format!("{others}{cname}={tok}; after=1");
            assert_eq!(extract(&cfg, Some(&jar), None, None).as_deref(), Some(tok.as_str()));
            let jar = format!("{cname}=\"{tok}\"");
            assert_eq!(extract(&cfg, Some(&jar), None, None).as_deref(), Some(tok.as_str()));
        }
    }
    // Any text, percent-encoded into the query, comes back decoded.
    cfg.query_param = true;
    let raw = String::from_utf8_lossy(f[2]).to_string();
    let q = format!("format=json&token={}&x=1", urlencoding::encode(&raw));
    assert_eq!(extract(&cfg, None, None, Some(&q)).as_deref(), Some(raw.as_str()));
    cfg.query_param = false;
    assert_eq!(extract(&cfg, None, None, Some(&q)), None, "query tokens are off by default");
});
