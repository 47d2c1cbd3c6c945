//! The floor: a minimal WebSocket server that does nothing but write pre-built frames.
//!
//! It answers the benchmark's small protocol (`bench/peers/common.py`) just enough for the
//! fan-out scenario: each connection gets `server_ready`, a `subscription_update` is acked,
//! `bench.publish {topic, count, start, size, frame_bytes}` builds `count` frames once (the peers'
//! envelope `{c,t,seq,tp,p:{s,d}}`, padded to `frame_bytes` when given) and writes them to every
//! subscriber of the topic, up to 64 KiB per write, then `bench.done` to the requester. No
//! queues, no per-subscriber state beyond the socket, no Python: what the kernel and one thread
//! cost to put the same bytes on the same sockets. A fan-out figure over this one is the share
//! of the machine an engine reaches.
//!
//! One thread (a current-thread runtime); meant to be pinned to the server's core. Prints
//! `floor: serving ws://HOST:PORT/wse pid PID` once it listens.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::codec;
use crate::conn::accept_key;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// Bytes per write at most (frames are never split across writes).
    #[arg(long, default_value_t = 65536)]
    pub write_bytes: usize,
}

type Writer = Rc<tokio::sync::Mutex<OwnedWriteHalf>>;

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<(u64, Writer)>>,
    received: u64,
}

/// Runs until killed.
pub fn run(a: Args) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: {e}");
            return 2;
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        let l = match TcpListener::bind((a.host.as_str(), a.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: bind {}:{}: {e}", a.host, a.port);
                return 2;
            }
        };
        println!("floor: serving ws://{}:{}/wse pid {}", a.host, a.port, std::process::id());
        let state = Rc::new(RefCell::new(State::default()));
        let mut next_id = 0u64;
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            next_id += 1;
            let (state, wb) = (state.clone(), a.write_bytes);
            tokio::task::spawn_local(async move {
                let _ = serve(s, next_id, state, wb).await;
            });
        }
    });
    rt.shutdown_background();
    code
}

/// Append one unmasked server frame.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

async fn send(w: &Writer, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame(&mut out, opcode, payload);
    w.lock().await.write_all(&out).await
}

/// The frames a publish request asks for, each one complete, concatenated; and where each ends.
pub fn build(p: &Value) -> (Vec<u8>, Vec<usize>) {
    let topic = p["topic"].as_str().unwrap_or("bench");
    let count = p["count"].as_u64().unwrap_or(1000);
    let start = p["start"].as_u64().unwrap_or(0);
    let size = p["size"].as_u64().unwrap_or(60) as usize;
    let want = p["frame_bytes"].as_u64().unwrap_or(0) as usize;
    let (mut buf, mut ends) = (Vec::new(), Vec::with_capacity(count as usize));
    for s in start..start + count {
        let text = |pad: usize| {
            format!(
                r#"{{"c":"U","t":"tick","seq":{},"tp":"{topic}","p":{{"s":{s},"d":"{}"}}}}"#,
                s + 1,
                "x".repeat(pad)
            )
        };
        let base = text(0).len();
        let pad = if want > 0 {
            want.saturating_sub(base)
        } else {
            size.saturating_sub(r#"{"s":12345,"d":""}"#.len())
        };
        frame(&mut buf, codec::OP_TEXT, text(pad).as_bytes());
        ends.push(buf.len());
    }
    (buf, ends)
}

async fn serve(s: TcpStream, id: u64, state: Rc<RefCell<State>>, write_bytes: usize) -> std::io::Result<()> {
    let (mut r, w) = s.into_split();
    let w: Writer = Rc::new(tokio::sync::Mutex::new(w));
    // The upgrade.
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        let mut tmp = [0u8; 4096];
        let n = r.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|x| x == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 65536 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    w.lock().await.write_all(resp.as_bytes()).await?;
    send(&w, codec::OP_TEXT, br#"{"c":"WSE","t":"server_ready","p":{"user_id":""}}"#).await?;
    buf.drain(..head_end);
    let mut tmp = vec![0u8; 65536];
    loop {
        while let Ok(Some(f)) = codec::parse(&buf, 1 << 24) {
            let mut payload = buf[f.header_len..f.total_len()].to_vec();
            if let Some(k) = f.mask {
                codec::apply_mask(&mut payload, k);
            }
            buf.drain(..f.total_len());
            match f.opcode {
                codec::OP_CLOSE => {
                    let _ = send(&w, codec::OP_CLOSE, &payload[..payload.len().min(2)]).await;
                    drop_conn(&state, id);
                    return Ok(());
                }
                codec::OP_PING => send(&w, codec::OP_PONG, &payload).await?,
                codec::OP_TEXT | codec::OP_BINARY => {
                    on_message(&payload, id, &w, &state, write_bytes).await?;
                }
                _ => {}
            }
        }
        let n = match r.read(&mut tmp).await {
            Ok(0) | Err(_) => {
                drop_conn(&state, id);
                return Ok(());
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn drop_conn(state: &Rc<RefCell<State>>, id: u64) {
    for subs in state.borrow_mut().topics.values_mut() {
        subs.retain(|(i, _)| *i != id);
    }
}

async fn on_message(
    data: &[u8],
    id: u64,
    w: &Writer,
    state: &Rc<RefCell<State>>,
    write_bytes: usize,
) -> std::io::Result<()> {
    let Ok(m) = serde_json::from_slice::<Value>(data) else { return Ok(()) };
    let p = &m["p"];
    match m["t"].as_str().unwrap_or("") {
        "subscription_update" => {
            let topics: Vec<String> = p["topics"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
                .unwrap_or_default();
            {
                let mut st = state.borrow_mut();
                for t in &topics {
                    st.topics.entry(t.clone()).or_default().push((id, w.clone()));
                }
            }
            let ack = json!({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","success":true,
                "success_topics":topics,"failed_topics":[]}});
            send(w, codec::OP_TEXT, ack.to_string().as_bytes()).await?;
        }
        "bench.publish" => {
            let (frames, ends) = build(p);
            let topic = p["topic"].as_str().unwrap_or("bench");
            let subs: Vec<Writer> = state
                .borrow()
                .topics
                .get(topic)
                .map(|v| v.iter().map(|(_, w)| w.clone()).collect())
                .unwrap_or_default();
            // Chunk boundaries at frame ends, each chunk at most `write_bytes` (or one frame).
            let (mut cuts, mut prev) = (vec![0usize], 0usize);
            for &e in &ends {
                let start = cuts[cuts.len() - 1];
                if e - start > write_bytes && prev > start {
                    cuts.push(prev);
                }
                prev = e;
            }
            if cuts[cuts.len() - 1] != frames.len() {
                cuts.push(frames.len());
            }
            // Chunk by chunk, every subscriber in turn: deliveries interleave as in a fan-out.
            for c in cuts.windows(2) {
                for s in &subs {
                    let _ = s.lock().await.write_all(&frames[c[0]..c[1]]).await;
                }
            }
            let done = json!({"c":"U","t":"bench.done","p":{"published": ends.len()}});
            send(w, codec::OP_TEXT, done.to_string().as_bytes()).await?;
        }
        "count" => state.borrow_mut().received += 1,
        "bench.stats" => {
            let n = state.borrow().received;
            let v = json!({"c":"U","t":"bench.stats","p":{"received": n}});
            send(w, codec::OP_TEXT, v.to_string().as_bytes()).await?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_padded_to_the_asked_size() {
        let (buf, ends) = build(&json!({"topic":"t","count":3,"frame_bytes":150}));
        assert_eq!(ends.len(), 3);
        let mut at = 0;
        for e in ends {
            let f = codec::parse(&buf[at..e], 1 << 20).unwrap().unwrap();
            assert_eq!(f.payload_len, 150);
            assert_eq!(f.total_len(), e - at);
            at = e;
        }
    }
}
