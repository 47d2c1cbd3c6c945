//! The mesh's tasks on the engine's runtime: accept peers, find and dial new ones, and run
//! one link per peer (a writer draining the peer's queue, a reader applying what it sends).

use std::collections::HashSet;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::peer::Peer;
use super::wire::{self, Frame};
use super::Mesh;
use crate::engine::Engine;

const SCAN_EVERY: Duration = Duration::from_millis(100);
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds this worker's mesh socket (a stale file of the same name is replaced).
pub fn bind(mesh: &Mesh) -> std::io::Result<StdUnixListener> {
    let path = mesh.path();
    let _ = std::fs::remove_file(&path);
    let l = StdUnixListener::bind(&path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the mesh until `stop`, then removes the socket file.
pub async fn run(mesh: Arc<Mesh>, engine: Arc<Engine>, listener: StdUnixListener, mut stop: watch::Receiver<bool>) {
    let l = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!(target: "wse.mesh", "mesh listener: {e}");
            return;
        }
    };
    let dialing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(SCAN_EVERY);
    loop {
        tokio::select! {
            r = l.accept() => {
                if let Ok((s, _)) = r {
                    tokio::spawn(link(mesh.clone(), engine.clone(), s));
                }
            }
            _ = tick.tick() => {
                engine.check_synced(&mesh);
                engine.check_cuts(&mesh);
                for name in candidates(&mesh) {
                    if mesh.is_linked(&name) || !dialing.lock().insert(name.clone()) {
                        continue;
                    }
                    let (mesh, engine, dialing) = (mesh.clone(), engine.clone(), dialing.clone());
                    tokio::spawn(async move {
                        if let Ok(s) = UnixStream::connect(std::path::Path::new(&mesh.cfg.dir).join(&name)).await {
                            link(mesh, engine, s).await;
                        }
                        dialing.lock().remove(&name);
                    });
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = std::fs::remove_file(mesh.path());
}

/// Peers' socket names that this worker should dial: those sorting after its own.
fn candidates(mesh: &Mesh) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(&mesh.cfg.dir) else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("mesh-") && n.ends_with(".sock") && n.as_str() > mesh.name.as_str())
        .collect()
}

/// One peer link, from the hello exchange until either side goes away.
async fn link(mesh: Arc<Mesh>, engine: Arc<Engine>, s: UnixStream) {
    let (mut rd, mut wr) = s.into_split();
    if wr.write_all(&wire::hello(mesh.cfg.slot, &mesh.name)).await.is_err() {
        return;
    }
    let mut buf = BytesMut::with_capacity(64 << 10);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match wire::take(&mut buf) {
                Ok(Some((Frame::Hello { slot, name }, _))) => return Some((slot, name)),
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) => {}
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    let Ok(Some((slot, name))) = hello else { return };
    let peer = Arc::new(Peer::new(name, slot));
    if !mesh.add_peer(peer.clone()) {
        return;
    }
    engine.presence_link_opened(&peer);
    mesh.stats.link_opened();
    let writer = {
        let (peer, engine) = (peer.clone(), engine.clone());
        tokio::spawn(async move {
            loop {
                let (b, gate) = peer.take().await;
                if wr.write_all(&b).await.is_err() {
                    break;
                }
                if gate > 0 {
                    // Written to the peer's socket: publications gated on it may go out here.
                    peer.written(gate);
                    engine.pubq.wake();
                }
            }
        })
    };
    let state = mesh.seq.is_some().then(|| {
        let (peer, engine) = (peer.clone(), engine.clone());
        tokio::spawn(async move { engine.send_state(&peer).await })
    });
    'read: loop {
        loop {
            match wire::take(&mut buf) {
                Ok(Some((f, len))) => apply(&mesh, &engine, &peer, f, len),
                Ok(None) => break,
                Err(e) => {
                    log::warn!(target: "wse.mesh", "mesh link to {}: {e}", peer.name);
                    break 'read;
                }
            }
        }
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = peer.cut.notified() => break,
        }
    }
    // A link cut while the peer's process lives: the peer keeps the topics it stamps and gets
    // what was handed to it again on the re-link. Marked before the peer leaves the live list,
    // so no publication meanwhile takes its topics over.
    let cut = mesh.seq.as_ref().is_some_and(|seq| {
        let alive = super::handoff::alive(&peer.name);
        if alive {
            seq.handoffs.cut(&peer);
        }
        alive
    });
    mesh.remove_peer(&peer);
    engine.presence_link_closed(&peer);
    writer.abort();
    if let Some(s) = state {
        s.abort();
    }
    engine.peer_gone(&mesh, &peer, cut);
}

fn apply(mesh: &Mesh, engine: &Engine, peer: &Peer, f: Frame, len: usize) {
    match f {
        Frame::Interest { topic, present } => peer.set_interest(topic, present),
        Frame::Publish { sent_ns, topic, category, msg_type, payload } => {
            mesh.stats.received(peer.slot, len);
            engine.publish_local(&topic, &category, &msg_type, &payload);
            mesh.stats.transit(sent_ns);
        }
        Frame::Stamped { origin, sent_ns, topic, stamp, body } => {
            mesh.stats.received(peer.slot, len);
            engine.mirror(mesh, peer, origin, &topic, &stamp, &body);
            mesh.stats.transit(sent_ns);
        }
        Frame::Sequence { id, topic, category, msg_type, payload } => {
            mesh.stats.received(peer.slot, len);
            engine.stamp_for(id, &topic, &category, &msg_type, &payload);
        }
        Frame::Snapshot { topic, epoch, pushed, owner, entries } => {
            engine.take_snapshot(mesh, peer, &topic, epoch, pushed, owner, entries);
        }
        Frame::Synced => {
            peer.synced.store(true, std::sync::atomic::Ordering::Relaxed);
            engine.synced_from(mesh, peer);
            engine.check_synced(mesh);
        }
        Frame::Presence(p) => engine.presence_from_peer(peer, p),
        Frame::Hello { .. } => {}
    }
}
