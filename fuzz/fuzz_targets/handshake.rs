//! The HTTP upgrade request (`handshake::find_end`, `parse_head`, `switching_protocols`) and
//! the token extraction that reads its headers.
//!
//! Properties:
//! - the head ends at the first blank line; no shorter prefix is taken for a whole head;
//! - path and query are the target's halves; origin, cookie and authorization are the request's;
//! - an accepted upgrade's 101 response parses as HTTP, and its Sec-WebSocket-Accept is the
//!   RFC 6455 digest of the request's key;
//! - token extraction on the headers never panics and returns text the request carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wse_fuzz::Rng;
use _runtime::auth::token;
use _runtime::config::JwtConfig;
use _runtime::handshake::{find_end, parse_head, switching_protocols};

fn check(head: &[u8]) {
    let Some(h) = parse_head(head) else { return };
    match h.query {
        Some(q) => assert_eq!(format!("{}?{q}", h.path), h.target),
        None => assert_eq!(h.path, h.target),
    }
    let contains = |s: &str| s.is_empty() || head.windows(s.len()).any(|w| w == s.as_bytes());
    for s in [h.origin, h.cookie, h.authorization].into_iter().flatten() {
        assert!(contains(s), "a header value that is not in the request");
    }
    let cfg = JwtConfig { query_param: true, ..Default::default() };
    // From a header, the token is text the request carries; from the query, it is decoded.
    if let Some(t) = token::extract(&cfg, h.cookie, h.authorization, None) {
        assert!(contains(&t), "a token that is not in the request");
    }
    let _ = token::extract(&cfg, h.cookie, h.authorization, h.query);
    let Ok(req) = &h.request else { return };
    let Ok(resp) = switching_protocols(req) else { return };
    let mut hdrs = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut hdrs);
    assert!(matches!(r.parse(&resp), Ok(httparse::Status::Complete(n)) if n == resp.len()), "101 response is not HTTP");
    assert_eq!(r.code, Some(101));
    let key = req.headers().get("sec-websocket-key").expect("an accepted upgrade has a key");
    let accept = r.headers.iter().find(|x| x.name.eq_ignore_ascii_case("sec-websocket-accept")).expect("accept header");
    assert_eq!(accept.value, tungstenite::handshake::derive_accept_key(key.as_bytes()).as_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some(end) = find_end(data) else {
        // The engine reads on; nothing here is a head yet.
        return check(data);
    };
    assert_eq!(&data[end - 4..end], b"\r\n\r\n");
    let mut rng = Rng::from_data(data);
    let k = rng.below(end);
    assert_eq!(find_end(&data[..k]), None, "a prefix taken for a whole head");
    check(&data[..end]);
});
