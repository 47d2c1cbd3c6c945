//! The cluster mesh: the workers of one `wse run --workers N` exchange publications over Unix
//! domain sockets on the host. Interest routing: each worker tells its peers which topics it
//! has subscribers for, and a publication crosses only to the peers that have the topic.
//! One stream per pair of workers carries both directions in order, so a subscriber receives
//! one worker's publications in the order they were made.
//!
//! Discovery: every worker listens on `<dir>/mesh-<slot>-<pid>.sock` and scans `dir`; of two
//! workers, the one whose socket name sorts first dials the other.

mod handoff;
mod link;
mod peer;
mod replica;
pub mod sequencer;
pub mod presence;
mod stats;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use crate::config::Config;
use crate::pubsub::topics::Topics;
pub use link::{bind, run};
pub use peer::Peer;
use sequencer::Sequencer;
pub use stats::MeshStats;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Directory holding the workers' mesh sockets (created by the supervisor).
    pub dir: String,
    /// This worker's index, 0..workers.
    pub slot: u32,
    pub workers: u32,
    /// Bytes queued for one peer before further publications to it are dropped (and counted).
    #[serde(default = "default_peer_queue")]
    pub max_peer_queue_bytes: usize,
}

fn default_peer_queue() -> usize {
    64 << 20
}

struct State {
    /// Topics with subscribers in this process: what peers are told.
    local: HashSet<Arc<str>>,
    peers: HashMap<Arc<str>, Arc<Peer>>,
}

pub struct Mesh {
    pub cfg: MeshConfig,
    /// This worker's socket file name, also its identity on the mesh.
    pub name: String,
    state: Mutex<State>,
    /// The peers, for the publish path (read-locked per publication).
    live: RwLock<Vec<Arc<Peer>>>,
    pub stats: MeshStats,
    /// With recovery on: one owner stamps each topic, every worker mirrors every ring.
    pub seq: Option<Sequencer>,
}

/// Builds the mesh when the config asks for one and hooks it to the topic registry.
pub fn attach(cfg: &Config, topics: &Topics) -> Result<Option<Arc<Mesh>>, String> {
    let Some(mc) = cfg.mesh.clone() else { return Ok(None) };
    if mc.workers == 0 || mc.slot >= mc.workers {
        return Err(format!("mesh slot {} is not below workers {}", mc.slot, mc.workers));
    }
    if !std::path::Path::new(&mc.dir).is_dir() {
        return Err(format!("mesh dir {:?} is not a directory", mc.dir));
    }
    let mut mesh = Mesh::new(mc);
    if cfg.recovery {
        mesh.seq = Some(Sequencer::new());
    }
    let mesh = Arc::new(mesh);
    let m = mesh.clone();
    topics.set_interest_hook(Box::new(move |topic, present| m.local_interest(topic, present)));
    Ok(Some(mesh))
}

impl Mesh {
    fn new(cfg: MeshConfig) -> Self {
        let name = format!("mesh-{}-{}.sock", cfg.slot, std::process::id());
        let stats = MeshStats::new(cfg.workers as usize);
        Self {
            cfg,
            name,
            state: Mutex::new(State { local: HashSet::new(), peers: HashMap::new() }),
            live: RwLock::new(Vec::new()),
            stats,
            seq: None,
        }
    }

    /// Runs `f` on the linked peers (under the read lock: no copy on the publish path).
    pub fn with_live<R>(&self, f: impl FnOnce(&[Arc<Peer>]) -> R) -> R {
        f(&self.live.read())
    }

    /// Ends every link as if the peers had gone (both sides treat it as a peer's death); the
    /// worker that dials re-links within a scan interval. Returns how many links were cut.
    pub fn cut_links(&self) -> usize {
        self.with_live(|peers| {
            for p in peers {
                // NOTE: notify_one keeps a permit if the link is not waiting on a read right now.
                p.cut.notify_one();
            }
            peers.len()
        })
    }

    /// Gates every live peer has written (the publish queue lets those through).
    pub fn released(&self) -> u64 {
        self.live.read().iter().map(|p| p.gate_open()).min().unwrap_or(u64::MAX)
    }

    /// True once the worker may serve clients: synced with its peers (or no recovery).
    pub fn is_ready(&self) -> bool {
        self.seq.as_ref().is_none_or(|s| s.is_ready())
    }

    /// Waits until `is_ready`.
    pub async fn wait_ready(&self) {
        while !self.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Peers that have sent their whole state.
    pub fn synced_count(&self) -> usize {
        self.live.read().iter().filter(|p| p.synced.load(std::sync::atomic::Ordering::Relaxed)).count()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.cfg.dir).join(&self.name)
    }

    /// Sends a local publication to every peer that has a subscriber for `topic`.
    pub fn forward(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) {
        let live = self.live.read();
        let mut frame = None;
        for p in live.iter() {
            if !p.wants(topic) {
                continue;
            }
            if frame.is_none() {
                frame = wire::publish(stats::now_ns(), topic, category, msg_type, payload);
                if frame.is_none() {
                    return;
                }
            }
            let f = frame.as_ref().expect("built above");
            if p.push(f, self.cfg.max_peer_queue_bytes) {
                self.stats.sent(p.slot, f.len());
            } else {
                self.stats.dropped();
            }
        }
    }

    /// The topic registry's hook: tell every peer, in order, under the state lock.
    fn local_interest(&self, topic: &str, present: bool) {
        let mut st = self.state.lock();
        if present {
            st.local.insert(Arc::from(topic));
        } else {
            st.local.remove(topic);
        }
        let mut f = BytesMut::new();
        wire::interest(&mut f, topic, present);
        for p in st.peers.values() {
            p.push_control(&f);
        }
    }

    /// Admits a peer: it first gets the whole local interest, then every change after it.
    /// False if a peer of that name is already linked.
    fn add_peer(&self, p: Arc<Peer>) -> bool {
        let mut st = self.state.lock();
        if st.peers.contains_key(&p.name) {
            return false;
        }
        let mut f = BytesMut::new();
        for t in &st.local {
            wire::interest(&mut f, t, true);
        }
        p.push_control(&f);
        if let Some(seq) = &self.seq {
            // Hand-offs go to it from now on; those it has not stamped (a cut link's) go again.
            seq.handoffs.linked(&p);
        }
        st.peers.insert(p.name.clone(), p.clone());
        self.live.write().push(p);
        true
    }

    fn remove_peer(&self, p: &Arc<Peer>) {
        let mut st = self.state.lock();
        if st.peers.get(&p.name).is_some_and(|q| Arc::ptr_eq(q, p)) {
            st.peers.remove(&p.name);
            self.live.write().retain(|q| !Arc::ptr_eq(q, p));
        }
    }

    fn is_linked(&self, name: &str) -> bool {
        self.state.lock().peers.contains_key(name)
    }

    pub fn peer_count(&self) -> usize {
        self.live.read().len()
    }

    /// Counters, per peer and overall, as JSON (read by the worker's control socket).
    pub fn stats_json(&self) -> String {
        let peers: Vec<serde_json::Value> = self
            .live
            .read()
            .iter()
            .map(|p| serde_json::json!({"name": &*p.name, "slot": p.slot, "topics": p.interest_count()}))
            .collect();
        let mut j = self.stats.to_json(self.cfg.slot, peers);
        // Zeros without recovery, so the families are always there for dashboards and alerts.
        let z = sequencer::SeqStats::default();
        let st = self.seq.as_ref().map_or(&z, |s| &s.stats);
        use std::sync::atomic::Ordering::Relaxed;
        j["recovery"] = serde_json::json!({
            "ready": self.is_ready(),
            "stamped_for_peers": st.stamped_for_peers.load(Relaxed),
            "handed_to_owner": st.handed_to_owner.load(Relaxed),
            "rehanded": st.rehanded.load(Relaxed),
            "mirrored": st.mirrored.load(Relaxed),
            "snapshot_bytes_in": st.snapshot_bytes_in.load(Relaxed),
            "conflicts": st.conflicts.load(Relaxed),
        });
        j.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Frame;

    fn frames(mut b: BytesMut) -> Vec<Frame> {
        let mut out = vec![];
        while let Some((f, _)) = wire::take(&mut b).unwrap() {
            out.push(f);
        }
        out
    }

    fn mesh() -> Mesh {
        Mesh::new(MeshConfig { dir: "/nonexistent".into(), slot: 0, workers: 2, max_peer_queue_bytes: 200 })
    }

    #[test]
    fn a_new_peer_gets_the_interest_snapshot_then_every_change_in_order() {
        let m = mesh();
        m.local_interest("a", true);
        let p = Arc::new(Peer::new("mesh-1-1.sock".into(), 1));
        assert!(m.add_peer(p.clone()));
        assert!(!m.add_peer(Arc::new(Peer::new("mesh-1-1.sock".into(), 1))), "one link per peer name");
        m.local_interest("b", true);
        m.local_interest("a", false);
        let got = frames(p.take_now());
        assert_eq!(
            got,
            vec![
                Frame::Interest { topic: "a".into(), present: true },
                Frame::Interest { topic: "b".into(), present: true },
                Frame::Interest { topic: "a".into(), present: false },
            ]
        );
    }

    #[test]
    fn publications_cross_only_to_peers_with_interest_in_order_and_bounded() {
        let m = mesh();
        let p = Arc::new(Peer::new("mesh-1-1.sock".into(), 1));
        m.add_peer(p.clone());
        m.forward("t", "U", "x", b"0");
        assert!(p.take_now().is_empty(), "no interest, nothing sent");
        p.set_interest("t".into(), true);
        for i in 0..3u8 {
            m.forward("t", "U", "x", &[b'0' + i]);
        }
        let got: Vec<Vec<u8>> = frames(p.take_now())
            .into_iter()
            .map(|f| match f {
                Frame::Publish { payload, .. } => payload.to_vec(),
                f => panic!("{f:?}"),
            })
            .collect();
        assert_eq!(got, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
        // A pattern subscription on the peer draws every topic it matches, and only those.
        p.set_interest("news.*".into(), true);
        m.forward("news.eu", "U", "x", b"n");
        m.forward("sport.eu", "U", "x", b"s");
        let topics: Vec<String> = frames(p.take_now())
            .into_iter()
            .map(|f| match f {
                Frame::Publish { topic, .. } => topic,
                f => panic!("{f:?}"),
            })
            .collect();
        assert_eq!(topics, vec!["news.eu".to_string()]);
        p.set_interest("news.*".into(), false);
        m.forward("news.eu", "U", "x", b"n");
        assert!(p.take_now().is_empty());
        // Past the peer's byte bound publications are dropped and counted; interest still goes.
        for _ in 0..20 {
            m.forward("t", "U", "x", b"0123456789");
        }
        let json: serde_json::Value = serde_json::from_str(&m.stats_json()).unwrap();
        assert!(json["dropped"].as_u64().unwrap() > 0);
        m.local_interest("z", true);
        assert!(frames(p.take_now()).contains(&Frame::Interest { topic: "z".into(), present: true }));
        m.remove_peer(&p);
        assert_eq!(m.peer_count(), 0);
    }
}
