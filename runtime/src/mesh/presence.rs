//! Presence across the mesh. Each worker tells its peers its own presence: how many
//! connections a user has in a topic through it (an absolute count, so a repeat is harmless),
//! and user data with the stamp it was set at. A new link first gets a snapshot, then every
//! change, on the link's one ordered stream; when a link closes, all the peer reported is taken
//! away. The merge (who is present in the cluster, when to announce) is pubsub/presence.rs.
//!
//! Frames (see wire.rs for the framing):
//! - `PRESENCE_COUNT`: `[u32 n][u16 topic len][topic][user]`, all LE; n = 0: none left.
//! - `PRESENCE_DATA`: `[u64 stamp ns][u32 stamp slot][u16 user len][user][data JSON]`.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;

use super::peer::Peer;
use super::wire::{put_frame, PRESENCE_COUNT, PRESENCE_DATA};
use crate::engine::{Engine, MAX_TOPIC_LEN};
use crate::pubsub::presence::{Replica, Stamp};

/// User ids are JWT subjects; past this a frame is broken.
const MAX_USER_LEN: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum PresenceFrame {
    Count { topic: String, user: String, n: u32 },
    Data { user: String, stamp: Stamp, data: Value },
}

/// A stamp for data set now on worker `slot`: the host's monotonic clock, shared by its workers.
pub fn stamp(slot: u32) -> Stamp {
    (super::stats::now_ns(), slot)
}

pub fn count(out: &mut BytesMut, topic: &str, user: &str, n: u32) {
    if topic.len() > u16::MAX as usize {
        return; // cannot be: topics are at most MAX_TOPIC_LEN when subscribed
    }
    put_frame(out, PRESENCE_COUNT, &[&n.to_le_bytes(), &(topic.len() as u16).to_le_bytes(), topic.as_bytes(), user.as_bytes()]);
}

pub fn data(out: &mut BytesMut, user: &str, stamp: Stamp, data: &Value) {
    if user.len() > u16::MAX as usize {
        return;
    }
    let json = serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec());
    put_frame(
        out,
        PRESENCE_DATA,
        &[&stamp.0.to_le_bytes(), &stamp.1.to_le_bytes(), &(user.len() as u16).to_le_bytes(), user.as_bytes(), &json],
    );
}

/// Reads a presence frame's body; Err for anything malformed (the link is then dropped).
pub fn decode(kind: u8, mut body: Bytes) -> Result<PresenceFrame, String> {
    let text = |b: Bytes, what: &str| String::from_utf8(b.to_vec()).map_err(|_| format!("presence {what} is not UTF-8"));
    match kind {
        PRESENCE_COUNT => {
            if body.len() < 6 {
                return Err("short presence count".into());
            }
            let n = body.get_u32_le();
            let tl = body.get_u16_le() as usize;
            if tl == 0 || tl > MAX_TOPIC_LEN || body.len() < tl {
                return Err(format!("bad presence topic length {tl}"));
            }
            let topic = text(body.split_to(tl), "topic")?;
            if body.is_empty() || body.len() > MAX_USER_LEN {
                return Err(format!("bad presence user length {}", body.len()));
            }
            Ok(PresenceFrame::Count { topic, user: text(body, "user")?, n })
        }
        PRESENCE_DATA => {
            if body.len() < 14 {
                return Err("short presence data".into());
            }
            let stamp = (body.get_u64_le(), body.get_u32_le());
            let ul = body.get_u16_le() as usize;
            if ul == 0 || ul > MAX_USER_LEN || body.len() < ul {
                return Err(format!("bad presence user length {ul}"));
            }
            let user = text(body.split_to(ul), "user")?;
            let data = serde_json::from_slice(&body).map_err(|e| format!("presence data: {e}"))?;
            Ok(PresenceFrame::Data { user, stamp, data })
        }
        k => Err(format!("unknown presence frame kind {k}")),
    }
}

/// A peer as a replica: changes go in its outbound queue as control frames (never dropped).
impl Replica for Peer {
    fn count(&self, topic: &str, user: &str, n: u32) {
        let mut f = BytesMut::new();
        count(&mut f, topic, user, n);
        self.push_control(&f);
    }

    fn data(&self, user: &str, stamp: Stamp, d: &Value) {
        let mut f = BytesMut::new();
        data(&mut f, user, stamp, d);
        self.push_control(&f);
    }
}

/// One link's identity as a source: the peer's address, unique while the link lives.
fn source(peer: &Peer) -> u64 {
    peer as *const Peer as usize as u64
}

impl Engine {
    /// A link opened: the peer gets this worker's presence, then every change.
    pub(super) fn presence_link_opened(&self, peer: &Arc<Peer>) {
        if self.cfg.presence {
            self.presence.link(source(peer), peer.clone());
        }
    }

    /// A link closed (the peer died or restarts): its users leave unless present elsewhere.
    pub(super) fn presence_link_closed(&self, peer: &Peer) {
        if !self.cfg.presence {
            return;
        }
        for n in self.presence.unlink(source(peer)) {
            let user = n.user.clone();
            self.announce(0, n);
            self.presence_tidy(&user);
        }
    }

    /// A presence frame from `peer`.
    pub(super) fn presence_from_peer(&self, peer: &Peer, f: PresenceFrame) {
        if !self.cfg.presence {
            return;
        }
        match f {
            PresenceFrame::Count { topic, user, n } => {
                if let Some(notice) = self.presence.remote_count(source(peer), &topic, &user, n) {
                    self.announce(0, notice);
                }
                self.presence_tidy(&user);
            }
            PresenceFrame::Data { user, stamp, data } => {
                let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
                if size > self.presence.max_data_bytes() {
                    log::warn!(target: "wse.mesh", "mesh peer {}: presence data of {size} bytes ignored", peer.name);
                    return;
                }
                for notice in self.presence.remote_data(&user, stamp, data) {
                    self.announce(0, notice);
                }
                self.presence_tidy(&user);
            }
        }
    }

    /// Forgets a user's data when they are present nowhere and have no connection here.
    pub(crate) fn presence_tidy(&self, user: &str) {
        if self.user_slots.count(user) == 0 {
            self.presence.forget(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::wire::{self, Frame};
    use serde_json::json;

    #[test]
    fn presence_frames_round_trip() {
        let mut b = BytesMut::new();
        count(&mut b, "room", "ann", 3);
        data(&mut b, "ann", (42, 1), &json!({"s": "away"}));
        let mut got = vec![];
        while let Some((f, _)) = wire::take(&mut b).unwrap() {
            got.push(f);
        }
        assert_eq!(
            got,
            vec![
                Frame::Presence(PresenceFrame::Count { topic: "room".into(), user: "ann".into(), n: 3 }),
                Frame::Presence(PresenceFrame::Data { user: "ann".into(), stamp: (42, 1), data: json!({"s": "away"}) }),
            ]
        );
    }

    #[test]
    fn broken_presence_frames_are_errors() {
        let bad: Vec<(u8, Vec<u8>)> = vec![
            (PRESENCE_COUNT, vec![1, 0, 0]),
            (PRESENCE_COUNT, [&1u32.to_le_bytes()[..], &9u16.to_le_bytes(), b"ro"].concat()),
            (PRESENCE_COUNT, [&1u32.to_le_bytes()[..], &0u16.to_le_bytes(), b"ann"].concat()),
            (PRESENCE_COUNT, [&1u32.to_le_bytes()[..], &1u16.to_le_bytes(), b"r"].concat()),
            (PRESENCE_COUNT, [&1u32.to_le_bytes()[..], &1u16.to_le_bytes(), b"r\xff"].concat()),
            (PRESENCE_DATA, vec![0; 13]),
            (PRESENCE_DATA, [&[0u8; 12][..], &3u16.to_le_bytes(), b"ann", b"{not json"].concat()),
            (PRESENCE_DATA, [&[0u8; 12][..], &40u16.to_le_bytes(), b"ann", b"1"].concat()),
        ];
        for (kind, body) in bad {
            let mut b = BytesMut::new();
            put_frame(&mut b, kind, &[&body]);
            assert!(wire::take(&mut b).is_err(), "{kind} {body:?}");
        }
    }
}
