//! The bridge's task on the engine's runtime: dial Redis (plain, or a Redis Cluster when the
//! server says it is one), hold the subscriptions the worker wants, send publications in
//! pipelined batches, and on failure open the breaker and redial with backoff.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{cmd, Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Value};
use tokio::sync::{mpsc, watch, Notify};

use super::{scripts, wire, Bridge, Out, Wants};
use crate::engine::Engine;
use crate::protocol::time::now_ms;
use crate::pubsub::patterns::is_pattern;

const BATCH: usize = 2048;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a host's pattern stays in the registry without being refreshed.
const PATTERN_TTL_MS: u64 = 15_000;

#[derive(Clone)]
pub(crate) enum Link {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Link {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, c: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Plain(x) => x.req_packed_command(c),
            Link::Cluster(x) => x.req_packed_command(c),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, p: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Plain(x) => x.req_packed_commands(p, offset, count),
            Link::Cluster(x) => x.req_packed_commands(p, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Runs the bridge until `stop`.
pub async fn run(b: Arc<Bridge>, engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let mut wants = Wants::default();
    let mut backoff = BACKOFF_MIN;
    let mut dialled = false;
    let mut said = false;
    loop {
        let (tx, rx) = mpsc::unbounded_channel();
        match connect(&b, tx).await {
            Ok(link) => {
                if dialled {
                    b.stats.reconnects.fetch_add(1, Relaxed);
                }
                if said {
                    eprintln!("wse: redis bridge: connected again");
                }
                (dialled, said, backoff) = (true, false, BACKOFF_MIN);
                *b.link.lock() = Some(link.clone());
                b.up.store(true, Relaxed);
                let down = Arc::new(Notify::new());
                let recv = tokio::spawn(receive(b.clone(), engine.clone(), rx, down.clone()));
                let stopped = session(&b, &engine, link, &mut wants, &down, &mut stop).await;
                recv.abort();
                b.up.store(false, Relaxed);
                *b.link.lock() = None;
                b.confirmed.lock().clear();
                b.confirmed_wake.notify_waiters();
                if stopped {
                    return;
                }
            }
            Err(e) => {
                b.stats.errors.fetch_add(1, Relaxed);
                if !said {
                    eprintln!("wse: redis bridge: {e} (retrying with backoff; publications are buffered)");
                    said = true;
                }
            }
        }
        // The breaker is open: nothing is sent until the next dial succeeds.
        let jitter = Duration::from_millis(OsRng.next_u32() as u64 % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(b: &Bridge, tx: mpsc::UnboundedSender<PushInfo>) -> redis::RedisResult<Link> {
    let first = redis::Client::open(b.urls[0].as_str())?;
    let probe_cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    let mut probe = first.get_multiplexed_async_connection_with_config(&probe_cfg).await?;
    let info: String = cmd("INFO").arg("cluster").query_async(&mut probe).await?;
    if info.contains("cluster_enabled:1") {
        let client = redis::cluster::ClusterClientBuilder::new(b.urls.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(6)
            .build()?;
        return Ok(Link::Cluster(client.get_async_connection().await?));
    }
    drop(probe);
    let mut info = first.get_connection_info().clone();
    info.redis.protocol = redis::ProtocolVersion::RESP3;
    let client = redis::Client::open(info)?;
    let cfg = probe_cfg.set_push_sender(tx);
    Ok(Link::Plain(client.get_multiplexed_async_connection_with_config(&cfg).await?))
}

/// One connection's life: subscribe to what is wanted, then send batches and apply changes
/// until the link fails (false) or the engine stops (true).
async fn session(b: &Arc<Bridge>, engine: &Engine, mut link: Link, wants: &mut Wants, down: &Notify, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = session_loop(b, engine, &mut link, wants, down, stop).await;
    if b.presence {
        if stopped {
            engine.presence_leave(b, &mut link).await;
        }
        engine.presence_stop(b);
    }
    stopped
}

/// True if `e` means the connection is gone (the session ends and the link is dialled again).
pub(crate) fn link_failed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_cluster_error()
}

async fn session_loop(b: &Arc<Bridge>, engine: &Engine, link: &mut Link, wants: &mut Wants, down: &Notify, stop: &mut watch::Receiver<bool>) -> bool {
    if !link.is_cluster() && scripts::load(link).await.is_err() {
        return false;
    }
    // With recovery, topics subscribed again after a failure are read from their streams where
    // this worker stopped; what arrives live meanwhile waits until then (`catching`).
    let catch: Vec<String> = if b.stamps {
        let mut c = b.catching.lock();
        for t in wants.all().into_iter().filter(|t| !is_pattern(t)) {
            c.entry(t).or_default();
        }
        c.keys().cloned().collect()
    } else {
        vec![]
    };
    for t in wants.all() {
        if subscribe(b, link, &t, true).await.is_err() {
            return false;
        }
    }
    for t in &catch {
        engine.redis_catch_up(b, link, t).await;
    }
    let session = u64::from(new_epoch());
    if b.presence && engine.presence_start(b, link, session).await.is_err() {
        return false;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let changes = std::mem::take(&mut *b.changes.lock());
        for c in changes {
            if let Some((t, on)) = wants.apply(c) {
                if let Err(e) = subscribe(b, link, &t, on).await {
                    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                        // Applied to `wants` already: the next session subscribes.
                        return false;
                    }
                    b.stats.errors.fetch_add(1, Relaxed);
                }
            }
        }
        if !publish_batch(b, link).await {
            return false;
        }
        if b.presence {
            let r = match engine.presence_send(b, link, session).await {
                Ok(()) => engine.presence_sync(b, link).await,
                e => e,
            };
            if let Err(e) = r {
                b.stats.errors.fetch_add(1, Relaxed);
                if link_failed(&e) {
                    return false;
                }
            }
        }
        if b.buffered() > 0 || (b.presence && b.presence_pending()) {
            continue;
        }
        tokio::select! {
            _ = b.out_wake.notified() => {}
            _ = b.changes_wake.notified() => {}
            _ = down.notified() => return false,
            _ = tick.tick() => {
                if refresh_patterns(b, link).await.is_err() {
                    b.stats.errors.fetch_add(1, Relaxed);
                }
                if b.presence {
                    if let Err(e) = engine.presence_tick(b, link, session).await {
                        b.stats.errors.fetch_add(1, Relaxed);
                        if link_failed(&e) {
                            return false;
                        }
                    }
                }
            }
            _ = stop.changed() => return true,
        }
    }
}

/// Redis glob syntax for one of our patterns (`*`, `?`; brackets and backslashes literal).
fn redis_glob(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '[' | ']' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

async fn subscribe(b: &Bridge, link: &mut Link, t: &str, on: bool) -> redis::RedisResult<()> {
    if is_pattern(t) {
        let ch = wire::pattern_channel(&b.prefix, &redis_glob(t));
        let key = wire::patterns_key(&b.prefix);
        if on {
            cmd("PSUBSCRIBE").arg(&ch).exec_async(link).await?;
            cmd("HSET").arg(&key).arg(t).arg(now_ms() + PATTERN_TTL_MS).exec_async(link).await?;
            b.local_patterns.lock().insert(t.to_string());
        } else {
            b.local_patterns.lock().remove(t);
            cmd("PUNSUBSCRIBE").arg(&ch).exec_async(link).await?;
        }
    } else {
        let ch = wire::channel(&b.prefix, t);
        let verb = if on { "SSUBSCRIBE" } else { "SUNSUBSCRIBE" };
        cmd(verb).arg(&ch).exec_async(link).await?;
    }
    let mut c = b.confirmed.lock();
    if on {
        c.insert(t.to_string());
    } else {
        c.remove(t);
    }
    drop(c);
    b.confirmed_wake.notify_waiters();
    Ok(())
}

/// Keeps this worker's patterns in the deployment's registry and reads everyone's.
async fn refresh_patterns(b: &Bridge, link: &mut Link) -> redis::RedisResult<()> {
    let key = wire::patterns_key(&b.prefix);
    let mine: Vec<String> = b.local_patterns.lock().iter().cloned().collect();
    let now = now_ms();
    for p in &mine {
        cmd("HSET").arg(&key).arg(p).arg(now + PATTERN_TTL_MS).exec_async(link).await?;
    }
    let all: Vec<(String, u64)> = cmd("HGETALL").arg(&key).query_async(link).await?;
    let (live, dead): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, exp)| *exp > now);
    if !dead.is_empty() {
        let mut c = cmd("HDEL");
        c.arg(&key);
        for (p, _) in &dead {
            c.arg(p);
        }
        c.exec_async(link).await?;
    }
    *b.live_patterns.write() = live.into_iter().map(|(p, _)| p).collect();
    Ok(())
}

/// Sends up to `BATCH` buffered publications; false if the link failed (they stay buffered).
async fn publish_batch(b: &Bridge, link: &mut Link) -> bool {
    let batch: Vec<Out> = {
        let mut q = b.out.lock();
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    };
    if batch.is_empty() {
        return true;
    }
    // One pipeline per topic: a topic's publications keep their order (a cluster connection
    // does not keep the order of separate requests), topics go in parallel (in a cluster, to
    // their own masters).
    let mut groups: Vec<Vec<usize>> = vec![];
    let mut by_topic: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, o) in batch.iter().enumerate() {
        let g = *by_topic.entry(o.topic.as_str()).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let outs = &batch;
    // An epoch for topics Redis has none for (one per batch: the script takes it only then).
    let epoch = new_epoch();
    let futs = groups.iter().map(|idx| {
        let build = move |by_sha: bool| {
            let mut p = redis::pipe();
            for &i in idx {
                for c in publish_cmds(b, &outs[i], by_sha, epoch) {
                    p.add_command(c).ignore();
                }
            }
            p
        };
        let mut l = link.clone();
        async move { scripts::exec(&mut l, build).await }
    });
    let results = futures_util::future::join_all(futs).await;
    let mut failed: Vec<usize> = vec![];
    let mut link_down = false;
    for (idx, r) in groups.iter().zip(results) {
        match r {
            Ok(()) => {
                b.stats.published.fetch_add(idx.len() as u64, Relaxed);
                b.stats.published_bytes.fetch_add(idx.iter().map(|&i| batch[i].body.len() as u64).sum(), Relaxed);
            }
            Err(e) if link_failed(&e) => {
                b.stats.errors.fetch_add(1, Relaxed);
                failed.extend(idx);
                link_down = true;
            }
            Err(e) => {
                eprintln!("wse: redis bridge: publish refused: {e}");
                b.stats.errors.fetch_add(1, Relaxed);
                b.stats.dropped.fetch_add(idx.len() as u64, Relaxed);
            }
        }
    }
    if failed.is_empty() {
        return !link_down;
    }
    // Back to the front, in order, within the buffer's bound (the oldest past it are dropped).
    // Sent again, a stamped publication Redis already took is recognised by its number.
    failed.sort_unstable();
    let mut slots: Vec<Option<Out>> = batch.into_iter().map(Some).collect();
    let mut q = b.out.lock();
    for i in failed.into_iter().rev() {
        if let Some(o) = slots[i].take() {
            q.push_front(o);
        }
    }
    while q.len() > b.max_buffer {
        q.pop_front();
        b.stats.dropped.fetch_add(1, Relaxed);
    }
    false
}

fn publish_cmds(b: &Bridge, o: &Out, by_sha: bool, epoch: u32) -> Vec<Cmd> {
    let ch = wire::channel(&b.prefix, &o.topic);
    let pat = b.pattern_wanted(&o.topic).then(|| wire::pattern_channel(&b.prefix, &o.topic));
    if b.stamps {
        let mut c = scripts::PUBLISH.head(by_sha, 2);
        c.arg(wire::meta_key(&b.prefix, &o.topic))
            .arg(wire::stream_key(&b.prefix, &o.topic))
            .arg(&ch)
            .arg(&o.body)
            .arg(epoch)
            .arg(b.stream_len)
            .arg(b.ttl_ms)
            .arg(pat.unwrap_or_default())
            .arg(&b.publisher)
            .arg(o.id);
        return vec![c];
    }
    let mut c = cmd("SPUBLISH");
    c.arg(&ch).arg(&o.body);
    let mut v = vec![c];
    if let Some(p) = pat {
        let mut c = cmd("PUBLISH");
        c.arg(p).arg(&o.body);
        v.push(c);
    }
    v
}

pub(crate) fn new_epoch() -> u32 {
    loop {
        let e = OsRng.next_u32();
        if e != 0 {
            return e;
        }
    }
}

async fn receive(b: Arc<Bridge>, engine: Arc<Engine>, mut rx: mpsc::UnboundedReceiver<PushInfo>, down: Arc<Notify>) {
    let presence = wire::presence_channel(&b.prefix);
    while let Some(p) = rx.recv().await {
        let (ch, msg, via_pattern) = match (&p.kind, &p.data[..]) {
            (PushKind::SMessage | PushKind::Message, [ch, msg]) => (ch, msg, false),
            (PushKind::PMessage, [_, ch, msg]) => (ch, msg, true),
            (PushKind::Disconnection, _) => {
                down.notify_one();
                continue;
            }
            _ => continue,
        };
        match (ch, msg) {
            (Value::BulkString(ch), Value::BulkString(msg)) if ch == presence.as_bytes() => engine.redis_presence_in(&b, msg),
            (Value::BulkString(ch), Value::BulkString(msg)) => engine.redis_in(&b, ch, msg, via_pattern),
            _ => {
                b.stats.malformed.fetch_add(1, Relaxed);
            }
        }
    }
}
