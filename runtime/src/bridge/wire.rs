//! What crosses Redis: key and channel names, the message format, and the Lua scripts that give
//! every topic one epoch and one run of offsets for the whole deployment.
//!
//! A topic's keys and channel share one hash tag (`<prefix>:{<topic>}`), so in a Redis Cluster
//! they live in one slot and a script may touch them all and `SPUBLISH` on the channel.

/// The shard channel of `topic`.
pub fn channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{{{topic}}}")
}

/// The classic channel pattern subscribers listen on (`PSUBSCRIBE` has no sharded form).
pub fn pattern_channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:p:{topic}")
}

/// The topic's epoch and last offset (a hash: `e`, `o`).
pub fn meta_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{{{topic}}}:m")
}

/// The topic's history (a stream bounded by `MAXLEN ~`), entry ids `<offset>-0`.
pub fn stream_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{{{topic}}}:s")
}

/// Live patterns across the deployment: pattern -> expiry (ms), kept by the hosts that have
/// pattern subscribers and read by publishers.
pub fn patterns_key(prefix: &str) -> String {
    format!("{prefix}:patterns")
}

/// Presence: the shard channel every worker's changes go on, the registry of live workers
/// (`<src>` -> `<expiry ms>:<session>`) and each worker's own hash. One hash tag: one slot.
pub fn presence_channel(prefix: &str) -> String {
    format!("{prefix}:presence:{{p}}")
}

pub fn presence_registry(prefix: &str) -> String {
    format!("{prefix}:presence:{{p}}:live")
}

pub fn presence_key(prefix: &str, src: &str) -> String {
    format!("{prefix}:presence:{{p}}:s:{src}")
}

/// The topic of a shard channel or pattern channel, if it is one of ours.
pub fn topic_of<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix(':')?;
    if let Some(t) = rest.strip_prefix("p:") {
        return Some(t);
    }
    rest.strip_prefix('{')?.strip_suffix('}')
}

/// A publication's body: a flags byte (`EARLY`), who made it (host id) and the message,
/// length-prefixed.
pub fn body(host: &str, early: bool, category: &str, msg_type: &str, payload: &[u8]) -> Option<Vec<u8>> {
    if host.len() > 255 || category.len() > 255 || msg_type.len() > 255 {
        return None;
    }
    let mut v = Vec::with_capacity(4 + host.len() + category.len() + msg_type.len() + payload.len() + 8);
    v.extend_from_slice(b"0:0:0:");
    v.push(if early { EARLY } else { 0 });
    for s in [host, category, msg_type] {
        v.push(s.len() as u8);
        v.extend_from_slice(s.as_bytes());
    }
    v.extend_from_slice(payload);
    Some(v)
}

/// Flag: its host delivered it to its own subscribers before Redis stamped it (Redis was
/// unreachable); that host's workers keep the stamped copy for recovery without delivering it.
pub const EARLY: u8 = 1;

/// A message read from Redis.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Epoch and offset from the publish script; 0 for an unstamped publication.
    pub epoch: u32,
    pub offset: u64,
    /// Redis's clock when it was stamped (ms); 0 when unstamped.
    pub at_ms: u64,
    /// Delivered on its host already (`EARLY`).
    pub early: bool,
    pub host: &'a str,
    pub category: &'a str,
    pub msg_type: &'a str,
    pub payload: &'a [u8],
}

/// Parses `<epoch>:<offset>:<ms>:` and the body (stamped by the script, or `0:0:0:` as sent).
pub fn parse(m: &[u8]) -> Option<Message<'_>> {
    let mut nums = [0u64; 3];
    let mut rest = m;
    for n in &mut nums {
        let i = memchr::memchr(b':', rest)?;
        *n = std::str::from_utf8(&rest[..i]).ok()?.parse().ok()?;
        rest = &rest[i + 1..];
    }
    let (&flags, mut rest) = rest.split_first()?;
    let mut strs = [""; 3];
    for s in &mut strs {
        let (&len, tail) = rest.split_first()?;
        let len = len as usize;
        if tail.len() < len {
            return None;
        }
        *s = std::str::from_utf8(&tail[..len]).ok()?;
        rest = &tail[len..];
    }
    Some(Message {
        epoch: u32::try_from(nums[0]).ok()?,
        offset: nums[1],
        at_ms: nums[2],
        early: flags & EARLY != 0,
        host: strs[0],
        category: strs[1],
        msg_type: strs[2],
        payload: rest,
    })
}

/// Stamps a publication and sends it: KEYS meta, stream; ARGV channel, body (with its `0:0:0:`
/// head), an epoch for a topic that has none, MAXLEN, TTL (ms), the pattern channel to publish
/// on as well (empty: none), the publisher's field and the publication's number (rising per
/// publisher: a batch sent again after a failure is not stamped twice). Returns the offset (0:
/// a repeat, ignored).
pub const PUBLISH: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
  redis.call('DEL', KEYS[2])
end
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[7]) or '0')
if tonumber(ARGV[8]) <= last then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[7], ARGV[8])
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local ms = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
local m = e .. ':' .. o .. ':' .. ms .. ':' .. string.sub(ARGV[2], 7)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], o .. '-0', 'm', m)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SPUBLISH', ARGV[1], m)
if ARGV[6] ~= '' then
  redis.call('PUBLISH', ARGV[6], m)
end
return o
"#;

/// Where a topic stands and its history after a point: KEYS meta, stream; ARGV an epoch for a
/// topic that has none, the point's offset (-1: no history), TTL (ms). Returns
/// `{epoch, last offset, entries after the point}`.
pub const POSITION: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local o = redis.call('HGET', KEYS[1], 'o')
local r = {}
if tonumber(ARGV[2]) >= 0 then
  r = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')
end
return {e, o, r}
"#;

/// One change of a worker's presence: KEYS its hash; ARGV the channel, the worker, its session,
/// the field, the value (empty: removed), TTL (ms). A hash of another session is started over.
/// Publishes `<src len>:<src><session>:<version>:<field len>:<field><value>`.
pub const PRESENCE: &str = r#"
if redis.call('HGET', KEYS[1], '#e') ~= ARGV[3] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], '#e', ARGV[3], '#v', 0)
end
local v = redis.call('HINCRBY', KEYS[1], '#v', 1)
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[1], ARGV[4])
else
  redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SPUBLISH', ARGV[1], string.len(ARGV[2]) .. ':' .. ARGV[2] .. ARGV[3] .. ':' .. v .. ':' .. string.len(ARGV[4]) .. ':' .. ARGV[4] .. ARGV[5])
return v
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_topic_hash_tag_and_parse_back() {
        assert_eq!(channel("wse", "chat.1"), "wse:{chat.1}");
        assert_eq!(stream_key("wse", "chat.1"), "wse:{chat.1}:s");
        assert_eq!(topic_of("wse", "wse:{chat.1}"), Some("chat.1"));
        assert_eq!(topic_of("wse", &pattern_channel("wse", "a.b")), Some("a.b"));
        assert_eq!(topic_of("wse", "other:{x}"), None);
    }

    #[test]
    fn a_body_parses_back_unstamped_and_stamped_and_garbage_is_refused() {
        let b = body("h1", false, "U", "chat", b"{\"a\":1}").unwrap();
        let m = parse(&b).unwrap();
        assert_eq!((m.epoch, m.offset, m.host, m.category, m.msg_type, m.payload), (0, 0, "h1", "U", "chat", &b"{\"a\":1}"[..]));
        assert!(!m.early && parse(&body("h1", true, "U", "t", b"").unwrap()).unwrap().early);
        // The script replaces the first six bytes (`0:0:0:`) with the stamp.
        let mut s = b"4242:7:1700000000000:".to_vec();
        s.extend_from_slice(&b[6..]);
        let m = parse(&s).unwrap();
        assert_eq!((m.epoch, m.offset, m.at_ms, m.msg_type), (4242, 7, 1_700_000_000_000, "chat"));
        for bad in [&b""[..], b"1:2:", b"x:0:0:", b"0:0:0:", b"0:0:0:\x00\x05ab", b"99999999999:0:0:\x00\x00\x00\x00"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert!(body(&"h".repeat(300), false, "U", "t", b"").is_none());
    }
}
