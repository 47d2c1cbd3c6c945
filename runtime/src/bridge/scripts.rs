//! The Lua scripts (wire.rs) as Redis runs them: `EVALSHA` of the script's SHA1, loaded on
//! each connection with `SCRIPT LOAD`; a `NOSCRIPT` answer (Redis restarted, its cache was
//! flushed, or a Cluster node never saw the script) sends the text once with `EVAL`, which
//! caches it again. A script's text crosses the wire once, not with every publication.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{cmd, Cmd, ErrorKind, Pipeline, RedisResult, Script, Value};

use super::wire;

/// A script's text and its SHA1.
pub struct Lua {
    text: &'static str,
    sha: String,
}

impl Lua {
    fn new(text: &'static str) -> Self {
        Self { text, sha: Script::new(text).get_hash().to_string() }
    }

    /// The head of a call with `keys` keys: `EVALSHA <sha> <keys>`, or `EVAL <text> <keys>`.
    pub fn head(&self, by_sha: bool, keys: usize) -> Cmd {
        let mut c = if by_sha { cmd("EVALSHA") } else { cmd("EVAL") };
        c.arg(if by_sha { self.sha.as_str() } else { self.text }).arg(keys);
        c
    }
}

pub static PUBLISH: LazyLock<Lua> = LazyLock::new(|| Lua::new(wire::PUBLISH));
pub static POSITION: LazyLock<Lua> = LazyLock::new(|| Lua::new(wire::POSITION));
pub static PRESENCE: LazyLock<Lua> = LazyLock::new(|| Lua::new(wire::PRESENCE));

/// Loads every script into the connection's server (a plain Redis; a Cluster's nodes get
/// them on their first `NOSCRIPT`).
pub async fn load(link: &mut impl ConnectionLike) -> RedisResult<()> {
    for s in [&*PUBLISH, &*POSITION, &*PRESENCE] {
        cmd("SCRIPT").arg("LOAD").arg(s.text).exec_async(link).await?;
    }
    Ok(())
}

/// Runs the pipeline `build(by_sha)` makes, by SHA and again with the text on `NOSCRIPT`.
/// Sending a call twice is safe: the publish script skips a number it stamped, presence
/// writes absolute values.
pub async fn exec(link: &mut impl ConnectionLike, build: impl Fn(bool) -> Pipeline) -> RedisResult<()> {
    match build(true).exec_async(link).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => build(false).exec_async(link).await,
        r => r,
    }
}

/// One call `build(by_sha)` makes, as `exec` runs a pipeline.
pub async fn query(link: &mut impl ConnectionLike, build: impl Fn(bool) -> Cmd) -> RedisResult<Value> {
    match build(true).query_async(link).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => build(false).query_async(link).await,
        r => r,
    }
}
