//! One publish round: request the publication, wait until every subscriber is complete (or the
//! timeout, or a stall), then add up the subscribers' figures.

use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::subscriber::{Shared, SlotStats};
use super::Args;
use crate::conn::Conn;
use crate::report::{self, hist_json, rate};
use crate::seq::SeqCheck;

/// One publish round.
pub async fn round(
    a: &Args,
    m: u64,
    shared: &Shared,
    publisher: &Conn,
    live: &[usize],
    r: u64,
    warmup: bool,
) -> Value {
    // Bursts: the round's messages asked for in requests of at most --burst-messages (bench.publish
    // only), each sent once every subscriber holds all the earlier ones, so that no server's
    // per-connection queue has to hold a whole round.
    let burst = match (&a.publish_msg, &a.topic_per_subscriber) {
        _ if a.centrifugo => a.burst_messages.clamp(1, 400),
        (None, None) if a.burst_messages > 0 => a.burst_messages,
        _ => m,
    };
    let request = |start: u64, count: u64| -> String {
        if a.centrifugo {
            let d = "x".repeat(a.size.saturating_sub(r#"{"s":12345,"d":""}"#.len()));
            let cmd = |s: u64| json!({"id": 100 + s, "publish": {"channel": a.topic, "data": {"s": s, "d": d}}}).to_string();
            return (start..start + count).map(cmd).collect::<Vec<_>>().join("\n");
        }
        let prefix = a.topic_per_subscriber.as_deref().unwrap_or("");
        match (&a.publish_msg, &a.topic_per_subscriber) {
            (Some(t), _) => t
                .replace("{topic}", &a.topic)
                .replace("{prefix}", prefix)
                .replace("{subscribers}", &a.subscribers.to_string())
                .replace("{messages}", &count.to_string())
                .replace("{start}", &start.to_string())
                .replace("{size}", &a.size.to_string()),
            (None, Some(p)) => {
                let mut v = json!({"t":"bench.users","p":{"prefix":p,"users":a.subscribers,"count":count,"size":a.size}});
                if a.frame_bytes > 0 {
                    v["p"]["frame_bytes"] = json!(a.frame_bytes);
                }
                v.to_string()
            }
            (None, None) => {
                let mut v = json!({"t":"bench.publish","p":{"topic":a.topic,"count":count,"size":a.size,"chunk":a.chunk}});
                if start > 0 {
                    v["p"]["start"] = json!(start);
                }
                if a.frame_bytes > 0 {
                    v["p"]["frame_bytes"] = json!(a.frame_bytes);
                }
                v.to_string()
            }
        }
    };
    // The checked subscribers are tallied below as before; the byte-counted ones apart.
    let (checked, counted): (Vec<usize>, Vec<usize>) =
        live.iter().partition(|&&i| shared.checked(i));
    let live = &checked[..];
    let base: Vec<u64> = checked
        .iter()
        .chain(&counted)
        .map(|&i| shared.bytes[i].load(Acquire))
        .collect();
    let (cbase, bbase) = base.split_at(checked.len());
    shared.complete.store(0, SeqCst);
    shared.live.store(live.len(), SeqCst);
    shared.hist.lock().expect("hist").reset();
    shared.inbox.lock().expect("inbox").clear();
    let window = report::Window::start(&a.common.server_pid, a.common.threads);
    let t0 = window.t0();
    *shared.info.lock().expect("info") = (m, t0);
    shared.round.store(r, Release);
    let deadline = t0 + Duration::from_secs_f64(a.timeout_s);
    let idle = Duration::from_secs_f64(a.idle_timeout_s);
    let (mut timed_out, mut stalled) = (false, false);
    // Every live subscriber (still open) holds the first `n` messages?
    let held = |n: u64| {
        live.iter().all(|&i| {
            let s = shared.slots[i].lock().expect("slot");
            s.closed.is_some() || (s.round == r && s.check.distinct >= n)
        })
    };
    let (sent, bursts) = {
        let mut sent = publisher.send_text(&request(0, burst.min(m))).await;
        let mut next = burst.min(m);
        let mut bursts = 1u64;
        while next < m && sent.is_ok() && !timed_out && !stalled {
            if held(next) {
                let count = burst.min(m - next);
                sent = publisher.send_text(&request(next, count)).await;
                next += count;
                bursts += 1;
                continue;
            }
            (timed_out, stalled) = tick(shared, t0, deadline, idle).await;
        }
        (sent, bursts)
    };
    while !timed_out && !stalled {
        let _ = tokio::time::timeout(Duration::from_millis(50), shared.done.notified()).await;
        if shared.complete.load(Acquire) >= live.len() || sent.is_err() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        let last = shared.base + Duration::from_nanos(shared.last_ns.load(Relaxed));
        if last > t0 && now.duration_since(last) > idle {
            stalled = true;
            break;
        }
        if shared.closed.load(Acquire) >= live.len() {
            break;
        }
    }
    // The round's bytes per subscriber, from the checked ones that completed (the publisher
    // aside: it also gets the server's replies); every such count must agree.
    let mut per_sub: Vec<u64> = checked
        .iter()
        .zip(cbase)
        .filter(|(&i, _)| i != shared.publisher)
        .filter(|(&i, _)| {
            let s = shared.slots[i].lock().expect("slot");
            s.round == r && s.check.complete()
        })
        .map(|(&i, b)| shared.bytes[i].load(Acquire) - b)
        .collect();
    per_sub.sort_unstable();
    per_sub.dedup();
    let round_bytes = per_sub.last().copied().unwrap_or(0);
    let byte_counts_disagree = !counted.is_empty() && per_sub.len() > 1;
    let got = |k: usize| shared.bytes[counted[k]].load(Acquire) - bbase[k];
    let closed_sub = |i: usize| shared.slots[i].lock().expect("slot").closed.is_some();
    while !counted.is_empty() && round_bytes > 0 && !timed_out && !stalled {
        if (0..counted.len()).all(|k| got(k) >= round_bytes || closed_sub(counted[k])) {
            break;
        }
        (timed_out, stalled) = tick(shared, t0, deadline, idle).await;
    }
    let w = window.end();
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let (mut b_complete, mut b_short, mut b_extra, mut b_closed, mut b_deliveries) =
        (0usize, 0usize, 0usize, 0usize, 0u64);
    let mut b_last = t0;
    for (k, &i) in counted.iter().enumerate() {
        let g = got(k);
        if closed_sub(i) {
            b_closed += 1;
        }
        if round_bytes > 0 && g == round_bytes {
            b_complete += 1;
            b_deliveries += m;
        } else if round_bytes > 0 && g > round_bytes {
            b_extra += 1;
            b_deliveries += m;
        } else {
            b_short += 1;
            b_deliveries += (g as u128 * m as u128)
                .checked_div(round_bytes as u128)
                .unwrap_or(0) as u64;
        }
        let at = shared.base + Duration::from_nanos(shared.read_ns[i].load(Acquire));
        if g > 0 && at > b_last {
            b_last = at;
        }
    }

    let mut tot = SlotStats::default();
    let mut subs_err = Vec::new();
    let (mut complete, mut closed, mut last_at) = (0usize, 0usize, t0);
    let (mut verify_failed, mut first_bad) = (0u64, None);
    // Bytes on the wire per delivery, frames whole (compressed when they came so), from the
    // checked subscribers besides the publisher (which also gets the server's replies).
    let (mut wire, mut wire_n) = (0u64, 0u64);
    for (k, &i) in live.iter().enumerate() {
        let s = shared.slots[i].lock().expect("slot").clone();
        let fresh = s.round == r;
        let c = if fresh {
            s.check.clone()
        } else {
            SeqCheck::new(m)
        };
        if fresh && c.complete() {
            complete += 1;
        }
        if s.closed.is_some() {
            closed += 1;
        }
        // The round ends at each subscriber's completion, or its last delivery if incomplete.
        let end = if c.complete() { s.done_at } else { s.last_at };
        if let (true, Some(e)) = (fresh, end) {
            last_at = last_at.max(e);
        }
        tot.check.received += c.received;
        tot.check.distinct += c.distinct;
        tot.check.duplicates += c.duplicates;
        tot.check.gaps += c.gaps;
        tot.check.gap_missing += c.gap_missing;
        tot.check.reordered += c.reordered;
        tot.check.out_of_range += c.out_of_range;
        tot.verified += s.verified;
        tot.verified_bytes += s.verified_bytes;
        tot.compressed += s.compressed * fresh as u64;
        if i != shared.publisher && fresh {
            wire += shared.bytes[i].load(Acquire) - cbase[k];
            wire_n += c.received;
        }
        tot.other += s.other;
        tot.masked += s.masked;
        verify_failed += s.verify_failed;
        if first_bad.is_none() {
            first_bad = s.first_bad.clone();
        }
        if (!c.clean() || s.verify_failed > 0 || s.closed.is_some())
            && subs_err.len() < a.max_error_subs
        {
            subs_err.push(json!({
                "subscriber": i, "received": c.received, "distinct": c.distinct, "missing": c.missing(),
                "duplicates": c.duplicates, "gaps": c.gaps, "gap_missing": c.gap_missing,
                "reordered": c.reordered, "out_of_range": c.out_of_range,
                "verify_failed": s.verify_failed, "closed": s.closed,
            }));
        }
    }
    let expected = m * (live.len() + counted.len()) as u64;
    let missing = (m * live.len() as u64).saturating_sub(tot.check.distinct)
        + (m * counted.len() as u64).saturating_sub(b_deliveries);
    let last_at = last_at.max(b_last);
    let wall = last_at.saturating_duration_since(t0).as_secs_f64();
    let t = &tot.check;
    let deliveries = t.received + b_deliveries;
    let ok = sent.is_ok()
        && b_short == 0
        && b_extra == 0
        && b_closed == 0
        && !byte_counts_disagree
        && (counted.is_empty() || round_bytes > 0)
        && !timed_out
        && !stalled
        && missing == 0
        && t.duplicates == 0
        && t.gaps == 0
        && t.reordered == 0
        && t.out_of_range == 0
        && verify_failed == 0
        && closed == 0
        && tot.masked == 0;
    let win = w.json(deliveries);
    let saturated = w.saturated();
    let mut v = json!({
        "round": r, "warmup": warmup, "ok": ok, "messages": m, "publish_requests": bursts,
        "expected": expected, "deliveries": deliveries, "distinct": t.distinct, "missing": missing,
        "checked_subscribers": live.len(), "byte_counted_subscribers": counted.len(),
        "byte_counted_complete": b_complete, "byte_counted_short": b_short, "byte_counted_extra": b_extra,
        "byte_counted_closed": b_closed, "round_bytes_per_subscriber": round_bytes,
        "checked_byte_counts_disagree": byte_counts_disagree,
        "duplicates": t.duplicates, "gaps": t.gaps, "gap_missing": t.gap_missing, "reordered": t.reordered,
        "out_of_range": t.out_of_range, "verified_in_full": tot.verified, "verify_failed": verify_failed,
        "first_verify_failure": first_bad, "other_frames": tot.other,
        "masked_server_frames": tot.masked,
        "complete_subscribers": complete, "closed_subscribers": closed,
        "timed_out": timed_out, "stalled": stalled, "publish_error": sent.err().map(|e| e.to_string()),
        "wall_s": report::round6(wall), "deliveries_per_s": rate(deliveries, wall),
        "lower_bound": saturated,
        "avg_frame_payload_bytes": tot.verified_bytes.checked_div(tot.verified).unwrap_or(0),
        "wire_bytes_per_delivery": wire.checked_div(wire_n), "compressed_deliveries": tot.compressed,
        "latency_from_publish": hist_json(&shared.hist.lock().expect("hist")),
        "server_messages": shared.inbox.lock().expect("inbox").clone(),
        "errors": subs_err,
    });
    if let (Some(o), Value::Object(wm)) = (v.as_object_mut(), win) {
        o.extend(wm);
    }
    eprintln!(
        "round {r}: {} deliveries in {:.3}s = {:.2}M/s, generator cpu {:.0}%{}",
        deliveries,
        wall,
        rate(deliveries, wall) / 1e6,
        w.share() * 100.0,
        if ok { "" } else { " (NOT ok)" }
    );
    v
}

/// Waits 2 ms, then says whether the round is past its deadline (first) or stalled: no delivery
/// for `idle` since the round's first one.
async fn tick(shared: &Shared, t0: Instant, deadline: Instant, idle: Duration) -> (bool, bool) {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let now = Instant::now();
    let last = shared.base + Duration::from_nanos(shared.last_ns.load(Relaxed));
    let timed_out = now >= deadline;
    (timed_out, !timed_out && last > t0 && now.duration_since(last) > idle)
}
