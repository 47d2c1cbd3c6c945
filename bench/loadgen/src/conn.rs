//! A WebSocket client connection: the HTTP upgrade (with the token as a header and a cookie),
//! then reading server frames in batches and writing masked client frames.
//!
//! Reads go into one scratch buffer per thread (not one per connection): the frames of a read are
//! handled in place and only an incomplete tail is kept by the connection, so thousands of
//! connections cost a few hundred bytes each and the hot buffer stays in cache.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use sha1::Digest;
use std::io::Read;

use crate::codec::{self, Rng};
use crate::deflate::{self, Inflate};
pub use crate::net::Target;
use crate::net::{tcp_connect, Sock};

/// One open WebSocket connection. Reading is done by one task (with its `Reader`); writes may
/// come from any task and are serialised by `wlock`, which also owns the masking PRNG.
pub struct Conn {
    pub sock: Sock,
    wlock: tokio::sync::Mutex<Rng>,
}

/// Per-connection read state: the incomplete tail of the last read and a fragmented message
/// being assembled (rare: servers send each message in one frame).
#[derive(Default)]
pub struct Reader {
    pending: Vec<u8>,
    /// Opcode (with 0x40 when compressed) and the bytes so far.
    frag: Option<(u8, Vec<u8>)>,
    pub max_payload: u64,
    /// permessage-deflate, when the server agreed to it, and its `Sec-WebSocket-Extensions`.
    pub inflate: Option<Inflate>,
    pub extensions: Option<String>,
    /// Frames that broke the rules (masked server frames): counted, not fatal.
    pub protocol_violations: u64,
    pub bytes_in: u64,
}

/// What a read produced. `Closed(code)`: the server sent a close frame (answered) or EOF (1006).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    Closed(u16),
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 256 * 1024]);
    static DISCARD: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 1 << 20]);
}

/// Timings of one connection's setup.
pub struct Opened {
    pub conn: Arc<Conn>,
    pub reader: Reader,
    pub connected: Instant,
    pub upgraded: Instant,
}

/// Connect and upgrade. Bytes that came after the 101 response stay in the reader.
pub async fn open(target: &Target, idx: usize, rng_seed: u64) -> Result<Opened, String> {
    let sock = tcp_connect(target.addr, target.source_for(idx))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connected = Instant::now();
    let mut rng = Rng::new(rng_seed ^ (idx as u64).wrapping_mul(0x100_0000_01b3));
    let mut key_bytes = [0u8; 16];
    key_bytes[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    key_bytes[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
        target.resource, target.host_header, key
    );
    if let Some(tok) = &target.token {
        if target.token_header {
            req.push_str(&format!("Authorization: Bearer {tok}\r\n"));
        }
        if target.token_cookie {
            req.push_str(&format!("Cookie: {}={tok}\r\n", target.cookie_name));
        }
    }
    if let Some(o) = &target.origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    if target.deflate {
        req.push_str(&format!("Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send upgrade: {e}"))?;

    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        let mut g = sock
            .fd
            .readable()
            .await
            .map_err(|e| format!("read upgrade: {e}"))?;
        let mut tmp = [0u8; 4096];
        match g.try_io(|s| s.get_ref().read(&mut tmp)) {
            Ok(Ok(0)) => return Err(format!("closed during upgrade after {} bytes", buf.len())),
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Ok(Err(e)) => return Err(format!("read upgrade: {e}")),
            Err(_) => continue,
        }
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("upgrade response headers too large".into());
        }
    };
    let upgraded = Instant::now();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("upgrade refused: {status}"));
    }
    let expect = accept_key(&key);
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let header = |name: &str| {
        let mut v = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        v.next().map(|(_, v)| v.to_string())
    };
    let accept = header("sec-websocket-accept");
    if accept.as_deref() != Some(expect.as_str()) {
        return Err(format!("bad Sec-WebSocket-Accept: {accept:?}"));
    }
    let extensions = header("sec-websocket-extensions");
    let inflate = match &extensions {
        Some(e) if target.deflate => Inflate::from_answer(e)?,
        Some(e) => return Err(format!("extension not offered: {e}")),
        None => None,
    };
    let reader = Reader {
        pending: buf[head_end..].to_vec(),
        max_payload: target.max_payload,
        inflate,
        extensions,
        ..Default::default()
    };
    let conn = Arc::new(Conn {
        sock,
        wlock: tokio::sync::Mutex::new(rng),
    });
    Ok(Opened {
        conn,
        reader,
        connected,
        upgraded,
    })
}

pub fn accept_key(key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

impl Conn {
    /// One non-blocking write attempt, from any thread (no runtime needed): the number of bytes
    /// written, 0 if the socket is full or another writer holds the connection.
    pub fn try_send_raw(&self, data: &[u8]) -> io::Result<usize> {
        let Ok(_g) = self.wlock.try_lock() else {
            return Ok(0);
        };
        self.sock.try_write(data)
    }

    /// Frame (masked) and send one message.
    pub async fn send(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut g = self.wlock.lock().await;
        let mut out = Vec::with_capacity(payload.len() + 14);
        codec::encode_frame(&mut out, opcode, payload, g.mask_key());
        self.sock.write_all(&out).await?;
        drop(g);
        Ok(())
    }

    pub async fn send_text(&self, text: &str) -> io::Result<()> {
        self.send(codec::OP_TEXT, text.as_bytes()).await
    }

    /// Frames built by the caller into `out` with masking keys from this connection's PRNG.
    pub async fn send_built(
        &self,
        build: impl FnOnce(&mut Rng, &mut Vec<u8>),
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut g = self.wlock.lock().await;
        out.clear();
        build(&mut g, out);
        self.sock.write_all(out).await
    }

    pub async fn close(&self, code: u16) -> io::Result<()> {
        self.send(codec::OP_CLOSE, &codec::close_payload(code, ""))
            .await
    }

    /// Read once (waiting for data), and call `f(opcode, payload, at)` for every complete data
    /// message in what was read; `at` is when the read returned. A compressed message comes
    /// inflated, with 0x40 (RSV1) added to its opcode. Pings are answered, a close
    /// frame is answered and ends the connection.
    pub async fn read_some<F>(&self, r: &mut Reader, mut f: F) -> io::Result<(Status, Instant)>
    where
        F: FnMut(u8, &[u8], Instant),
    {
        // Bytes left over from the upgrade are handled before the first read.
        if !r.pending.is_empty() && r.bytes_in == 0 {
            r.bytes_in = r.pending.len() as u64;
            let now = Instant::now();
            let data = std::mem::take(&mut r.pending);
            let mut data = data;
            let out = process(r, &mut data, now, &mut f);
            return self.finish(out, now).await;
        }
        loop {
            let mut g = self.sock.fd.readable().await?;
            let res = SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let p = r.pending.len();
                if s.len() < p + 64 * 1024 {
                    s.resize(p + 256 * 1024, 0);
                }
                s[..p].copy_from_slice(&r.pending);
                let space = s.len() - p;
                match g.get_inner().read(&mut s[p..]) {
                    Ok(0) => Ok(None),
                    Ok(n) => {
                        if n < space {
                            // Edge-triggered: a short read drained the socket.
                            g.clear_ready();
                        }
                        r.bytes_in += n as u64;
                        let now = Instant::now();
                        r.pending.clear();
                        let out = process(r, &mut s[..p + n], now, &mut f);
                        Ok(Some((out, now)))
                    }
                    Err(e) => {
                        if e.kind() == io::ErrorKind::WouldBlock {
                            g.clear_ready();
                        }
                        Err(e)
                    }
                }
            });
            match res {
                Ok(None) => return Ok((Status::Closed(1006), Instant::now())),
                Ok(Some((out, now))) => return self.finish(out, now).await,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok((Status::Closed(1006), Instant::now()))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Read once (waiting for data) without copying it: `recv(MSG_TRUNC)` on a TCP socket
    /// discards what it reads in the kernel and returns how much that was. For subscribers that
    /// are counted by bytes (the fan-out's unchecked ones): frames are neither parsed nor answered.
    /// Returns the bytes read (first, those the reader holds from the set-up) and when;
    /// `None` at the end of the stream.
    pub async fn read_discard(&self, r: &mut Reader) -> io::Result<Option<(u64, Instant)>> {
        use std::os::fd::AsRawFd;
        if !r.pending.is_empty() {
            // Already in bytes_in: read before, while the upgrade or the setup parsed frames.
            let n = r.pending.len() as u64;
            r.pending.clear();
            return Ok(Some((n, Instant::now())));
        }
        const ASK: usize = 1 << 20;
        loop {
            let mut g = self.sock.fd.readable().await?;
            let fd = g.get_inner().as_raw_fd();
            // The buffer is never written (MSG_TRUNC), but it is a real one of ASK bytes.
            let n = DISCARD.with(|b| {
                let mut b = b.borrow_mut();
                // SAFETY: fd is this connection's open socket; the buffer is valid for ASK bytes.
                unsafe {
                    libc::recv(
                        fd,
                        b.as_mut_ptr().cast(),
                        ASK,
                        libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    )
                }
            });
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        g.clear_ready();
                        continue;
                    }
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::ConnectionReset => return Ok(None),
                    _ => return Err(e),
                }
            }
            if n == 0 {
                return Ok(None);
            }
            let n = n as usize;
            if n < ASK {
                g.clear_ready();
            }
            r.bytes_in += n as u64;
            return Ok(Some((n as u64, Instant::now())));
        }
    }

    async fn finish(&self, out: Processed, now: Instant) -> io::Result<(Status, Instant)> {
        for p in &out.pings {
            self.send(codec::OP_PONG, p).await?;
        }
        if let Some(code) = out.close {
            // Answer the close (echo the code) and stop reading.
            let _ = self
                .send(codec::OP_CLOSE, &codec::close_payload(code, ""))
                .await;
            return Ok((Status::Closed(code), now));
        }
        if let Some(e) = out.error {
            let _ = self
                .send(codec::OP_CLOSE, &codec::close_payload(1002, ""))
                .await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok((Status::Open, now))
    }
}

/// The data messages of one read, waiting at most `timeout` for it. Empty on timeout.
pub async fn read_messages(
    conn: &Conn,
    r: &mut Reader,
    timeout: std::time::Duration,
) -> Result<Vec<Vec<u8>>, String> {
    let mut msgs = Vec::new();
    match tokio::time::timeout(timeout, conn.read_some(r, |_, d, _| msgs.push(d.to_vec()))).await {
        Err(_) => Ok(msgs),
        Ok(Ok((Status::Open, _))) => Ok(msgs),
        Ok(Ok((Status::Closed(code), _))) => Err(format!(
            "closed by the server ({code}) {}",
            first_text(&msgs)
        )),
        Ok(Err(e)) => Err(format!("read: {e}")),
    }
}

fn first_text(msgs: &[Vec<u8>]) -> String {
    msgs.first()
        .map(|m| String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned())
        .unwrap_or_default()
}

/// Answer the protocol's JSON keepalive (`{"t":"ping"}` from the server) with `PONG`.
/// Returns true if `data` was one.
pub async fn answer_keepalive(conn: &Conn, data: &[u8]) -> bool {
    if data.len() < 512 && memchr::memmem::find(data, b"\"t\":\"ping\"").is_some() {
        let _ = conn.send_text(r#"{"c":"WSE","t":"PONG","p":{}}"#).await;
        return true;
    }
    false
}

#[derive(Default)]
struct Processed {
    pings: Vec<Vec<u8>>,
    close: Option<u16>,
    error: Option<String>,
}

/// Handle every complete frame of `buf`; keep the incomplete tail in `r.pending`.
#[inline]
fn process<F: FnMut(u8, &[u8], Instant)>(
    r: &mut Reader,
    buf: &mut [u8],
    now: Instant,
    f: &mut F,
) -> Processed {
    let mut out = Processed::default();
    let mut at = 0usize;
    while at < buf.len() {
        let frame = match codec::parse(&buf[at..], r.max_payload) {
            Ok(Some(fr)) => fr,
            Ok(None) => break,
            Err(e) => {
                out.error = Some(format!("{e:?}"));
                return out;
            }
        };
        let start = at + frame.header_len;
        let end = at + frame.total_len();
        at = end;
        let payload = &mut buf[start..end];
        if let Some(k) = frame.mask {
            r.protocol_violations += 1;
            codec::apply_mask(payload, k);
        }
        let z = if frame.rsv1 { 0x40 } else { 0 };
        if z != 0 && (r.inflate.is_none() || !matches!(frame.opcode, 1 | 2)) {
            out.error =
                Some("RSV1 set: permessage-deflate was not agreed, or not a data frame".into());
            return out;
        }
        match frame.opcode {
            codec::OP_TEXT | codec::OP_BINARY if frame.fin && r.frag.is_none() => {
                if let Err(e) = message(r, frame.opcode | z, payload, now, f) {
                    out.error = Some(e);
                    return out;
                }
            }
            codec::OP_TEXT | codec::OP_BINARY => {
                if r.frag.is_some() {
                    out.error = Some("new message inside a fragmented one".into());
                    return out;
                }
                r.frag = Some((frame.opcode | z, payload.to_vec()));
            }
            codec::OP_CONT => match r.frag.as_mut() {
                Some((_, v)) => {
                    v.extend_from_slice(payload);
                    if frame.fin {
                        let (op, v) = r.frag.take().unwrap_or_default();
                        if let Err(e) = message(r, op, &v, now, f) {
                            out.error = Some(e);
                            return out;
                        }
                    }
                }
                None => {
                    out.error = Some("continuation without a message".into());
                    return out;
                }
            },
            codec::OP_PING => out.pings.push(payload.to_vec()),
            codec::OP_PONG => {}
            codec::OP_CLOSE => {
                out.close = Some(codec::close_code(payload));
                return out;
            }
            _ => {}
        }
    }
    r.pending.extend_from_slice(&buf[at..]);
    out
}

/// One data message to `f`, inflated first when its opcode carries 0x40.
#[inline]
fn message<F: FnMut(u8, &[u8], Instant)>(
    r: &mut Reader,
    op: u8,
    payload: &[u8],
    now: Instant,
    f: &mut F,
) -> Result<(), String> {
    match (op & 0x40 != 0, r.inflate.as_mut()) {
        (true, Some(i)) => f(op, i.message(payload, r.max_payload as usize)?, now),
        _ => f(op, payload, now),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn process_keeps_the_tail_and_reassembles_fragments() {
        let mut r = Reader {
            max_payload: 1 << 20,
            ..Default::default()
        };
        let mut got = Vec::new();
        // "ab" (binary), first fragment "He", a ping, continuation "llo" (fin), then half a frame.
        let mut buf = vec![
            0x82, 0x02, b'a', b'b', 0x01, 0x02, b'H', b'e', 0x89, 0x01, b'x',
        ];
        buf.extend_from_slice(&[0x80, 0x03, b'l', b'l', b'o', 0x81, 0x05, b'h']);
        let out = process(&mut r, &mut buf, Instant::now(), &mut |op, p: &[u8], _| {
            got.push((op, p.to_vec()))
        });
        assert_eq!(
            got,
            vec![
                (codec::OP_BINARY, b"ab".to_vec()),
                (codec::OP_TEXT, b"Hello".to_vec())
            ]
        );
        assert_eq!(out.pings, vec![b"x".to_vec()]);
        assert_eq!(r.pending, vec![0x81, 0x05, b'h']);
    }
}
