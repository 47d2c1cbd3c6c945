//! The HTTP upgrade: read the request (bounded, under a timeout), check path and Origin, let
//! tungstenite validate the upgrade and build the 101 response, and check the JWT before the
//! connection exists for Python. A refused token gets an error message and close code 4401.
//! The Origin, token and encoding checks are functions of their own, which external
//! connections (`external.rs`) run too.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::handshake::server::create_response;
use tungstenite::http;

use crate::auth::jwt::AuthError;
use crate::auth::token;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::protocol::{deflate, envelope, frame};

/// A connection that passed the upgrade and the token check.
pub struct Accepted<S> {
    pub stream: S,
    /// The `101 Switching Protocols` answer, not written yet: the connection's writer sends it
    /// in one write with the first frames queued (`server_ready`), one segment instead of two.
    pub head: Vec<u8>,
    /// Bytes the client sent after its request (its first frames, if it did not wait).
    pub leftover: BytesMut,
    pub user_id: Option<String>,
    pub claims: Option<Map<String, Value>>,
    pub enc: Encodings,
}

/// What the client asked for in the query string, as far as the server allows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Encodings {
    /// msgpack frames (`?format=msgpack`).
    pub msgpack: bool,
    /// The client accepts zlib frames (`?compression=true`).
    pub compression: bool,
    /// The compact envelope, without `id` and `ts` (`?envelope=compact`; the server's
    /// `compact_envelope` default otherwise, which `?envelope=full` overrides).
    pub compact: bool,
    /// permessage-deflate, if offered by the client and enabled.
    pub deflate: Option<deflate::Params>,
}

/// `key=value` in the query string (case-insensitive).
fn query_has(query: Option<&str>, key_value: &str) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv.eq_ignore_ascii_case(key_value)))
}

/// Where the request head ends (just past its blank line), once it has all been read.
pub fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What the engine reads from an upgrade request's head (its bytes up to the blank line).
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The request target; `path` and `query` are its two halves around the first `?`.
    pub target: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// Every `Sec-WebSocket-Extensions` header's value, in order (permessage-deflate offers).
    pub extensions: Vec<&'a str>,
    /// The request as tungstenite checks it; Err when a header or the target is not valid HTTP.
    pub request: Result<http::Request<()>, http::Error>,
}

/// Parses a request head; `None` when it is not an HTTP/1 request (at most 64 headers).
pub fn parse_head(head: &[u8]) -> Option<RequestHead<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut builder = http::Request::builder().method(req.method.unwrap_or("GET")).uri(target);
    builder = builder.version(if req.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    let (mut origin, mut cookie, mut authorization) = (None, None, None);
    let mut extensions = Vec::new();
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
        let v = std::str::from_utf8(h.value).ok();
        if h.name.eq_ignore_ascii_case("origin") {
            origin = v;
        } else if h.name.eq_ignore_ascii_case("cookie") {
            cookie = v;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = v;
        } else if h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.extend(v);
        }
    }
    let method = req.method.unwrap_or("GET");
    Some(RequestHead { method, target, path, query, origin, cookie, authorization, extensions, request: builder.body(()) })
}

/// The `101 Switching Protocols` head answering a valid upgrade request, or why it is not one.
pub fn switching_protocols(request: &http::Request<()>) -> Result<Vec<u8>, tungstenite::error::Error> {
    let response = create_response(request)?;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (k, v) in response.headers() {
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
}

async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One access-log line (debug level, logger `wse.access`) for a refused upgrade: the peer, the
/// request's method and path (never the query string, which may carry a token), the status
/// answered and why. The path is the client's: quoted, escaped and cut to 200 characters.
fn refused(addr: SocketAddr, method: &str, path: &str, status: u16, why: &str) {
    if log::log_enabled!(target: "wse.access", log::Level::Debug) {
        let cut: String = path.chars().take(200).collect();
        log::debug!(target: "wse.access", "{addr} {} {cut:?} {status} {why}", method.escape_debug());
    }
}

/// Who a connection is, from its token (both `None` when JWT is off or optional and absent).
pub struct Identity {
    pub user_id: Option<String>,
    pub claims: Option<Map<String, Value>>,
}

/// The token check every transport runs (this handshake and external connections): finds the
/// token where the config says, verifies it, and counts a refusal by its kind.
pub fn authenticate(engine: &Engine, cookie: Option<&str>, authorization: Option<&str>, query: Option<&str>) -> Result<Identity, AuthError> {
    let r = match (&engine.verifier, &engine.cfg.jwt) {
        (Some(v), Some(jcfg)) => match token::extract(jcfg, cookie, authorization, query) {
            Some(t) => v.verify(&t).map(Some),
            None if jcfg.required => Err(AuthError::Missing),
            None => Ok(None),
        },
        _ => Ok(None),
    };
    let m = &engine.metrics;
    match r {
        Ok(claims) => {
            let user_id = claims.as_ref().and_then(|c| match c.get("sub") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
            Ok(Identity { user_id, claims })
        }
        Err(e) => {
            match e {
                AuthError::Missing => Metrics::inc(&m.auth_missing),
                AuthError::Expired => Metrics::inc(&m.auth_expired),
                _ => Metrics::inc(&m.auth_failed),
            }
            Err(e)
        }
    }
}

/// The `Origin` allow-list against cross-site WebSocket hijacking: with a list, a request
/// whose `Origin` is not on it is refused (403). Empty allows any. A request without `Origin`
/// is allowed: browsers always send it on a WebSocket handshake, so its absence means a client
/// that is not a browser, which cannot carry a victim's cookies. A refusal is counted.
pub fn origin_allowed(engine: &Engine, origin: Option<&str>) -> bool {
    if origin_listed(&engine.cfg.allowed_origins, origin) {
        return true;
    }
    Metrics::inc(&engine.metrics.handshake_bad_origin);
    false
}

/// `origin` is on the list (compared without case, a trailing `/` ignored), or the list is
/// empty, or there is no `Origin` header. `*` on the list allows any origin; `null` (sandboxed
/// frames, `file:` pages) is allowed only when listed.
pub fn origin_listed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(o) = origin else { return true };
    let o = o.trim().trim_end_matches('/');
    allowed.is_empty() || allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(o))
}

/// The encodings the client asked for in the query string and the server allows.
pub fn encodings(engine: &Engine, query: Option<&str>) -> Encodings {
    let cfg = &engine.cfg;
    let compact = if query_has(query, "envelope=compact") {
        true
    } else if query_has(query, "envelope=full") {
        false
    } else {
        cfg.compact_envelope
    };
    Encodings {
        msgpack: cfg.msgpack && query_has(query, "format=msgpack"),
        compression: cfg.compression && query_has(query, "compression=true"),
        compact,
        deflate: None,
    }
}

/// Runs the handshake. `None` means the client was answered and the socket is done.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(engine: &Arc<Engine>, mut stream: S, addr: SocketAddr) -> Option<Accepted<S>> {
    let cfg = &engine.cfg;
    let m = &engine.metrics;
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(e) = find_end(&buf) {
            break e;
        }
        if buf.len() >= cfg.max_request_bytes {
            Metrics::inc(&m.handshake_bad_request);
            refused(addr, "-", "-", 431, "request too large");
            reply(&mut stream, "431 Request Header Fields Too Large", "request too large\n").await;
            return None;
        }
        buf.reserve(1024);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    let head = buf.split_to(end);
    let Some(RequestHead { method, target: _, path, query, origin, cookie, authorization, extensions, request }) = parse_head(&head) else {
        Metrics::inc(&m.handshake_bad_request);
        refused(addr, "-", "-", 400, "malformed request");
        reply(&mut stream, "400 Bad Request", "malformed request\n").await;
        return None;
    };
    if path != cfg.path {
        Metrics::inc(&m.handshake_bad_path);
        refused(addr, method, path, 404, "bad path");
        reply(&mut stream, "404 Not Found", "no WebSocket endpoint here\n").await;
        return None;
    }
    if !origin_allowed(engine, origin) {
        refused(addr, method, path, 403, "origin not allowed");
        reply(&mut stream, "403 Forbidden", "origin not allowed\n").await;
        return None;
    }
    let Ok(request) = request else {
        Metrics::inc(&m.handshake_bad_request);
        refused(addr, method, path, 400, "malformed request");
        reply(&mut stream, "400 Bad Request", "malformed request\n").await;
        return None;
    };
    let mut head = match switching_protocols(&request) {
        Ok(h) => h,
        Err(e) => {
            Metrics::inc(&m.handshake_bad_request);
            refused(addr, method, path, 400, &format!("not a WebSocket upgrade: {e}"));
            reply(&mut stream, "400 Bad Request", &format!("not a WebSocket upgrade: {e}\n")).await;
            return None;
        }
    };
    let auth = authenticate(engine, cookie, authorization, query);
    let deflate = match cfg.deflate_settings() {
        Some(s) if auth.is_ok() => deflate::negotiate(extensions, &s),
        _ => None,
    };
    if let Some((_, ext)) = &deflate {
        // The answer's last line is the blank one: the extension header goes before it.
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        head.extend_from_slice(ext.as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
    }
    match auth {
        Ok(id) => {
            Metrics::inc(&m.handshakes_ok);
            let Identity { user_id, claims } = id;
            let enc = Encodings { deflate: deflate.map(|(p, _)| p), ..encodings(engine, query) };
            Some(Accepted { stream, head, leftover: buf, user_id, claims, enc })
        }
        Err(e) => {
            refused(addr, method, path, 101, &format!("closed 4401: {}", e.message()));
            // Upgrade, say why, close with 4401: browsers cannot read an HTTP refusal's status.
            let err = envelope::error(e.code(), &e.message(), 1);
            head.extend_from_slice(&frame::build(engine.opcode(), &err));
            head.extend_from_slice(&frame::close_frame(4401, e.reason()));
            let _ = stream.write_all(&head).await;
            let _ = stream.shutdown().await;
            // Drain the client's close reply briefly so the close is clean.
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), stream.read(&mut sink)).await;
            None
        }
    }
}
