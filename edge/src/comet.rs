//! goim's comet: authenticated connections in buckets, rooms per bucket, deliveries fanned
//! out to connections' outboxes.
//!
//! A connection enters the comet once core has accepted its AUTH. Its id encodes its bucket
//! (`id & BUCKET_MASK`), chosen by hashing the device id (only to spread the locks: the id
//! is unique per edge whatever the device, and deliveries address connection ids, which core
//! resolved from `(user, device)`), so a delivery addressed to a connection id goes straight
//! to one bucket, and each bucket has its own lock (goim splits
//! its locks the same way). A bucket holds its connections and, for each room, the members
//! it holds; a room delivery walks every bucket's member list and hands each member the same
//! pre-encoded `Bytes`. Edge-wide room totals decide when core is told a room appeared on or
//! left this edge.

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::outbox::{CloseReason, Outbox, Pushed};

/// At most this many buckets (the low bits of a connection id).
const MAX_BUCKETS: usize = 1024;
const BUCKET_MASK: u64 = (MAX_BUCKETS as u64) - 1;

/// A connection as the comet holds it.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    /// Where its deliveries go.
    pub(crate) outbox: Arc<Outbox>,
    /// Its rooms.
    rooms: Vec<String>,
}

#[derive(Debug, Default)]
struct Bucket {
    conns: HashMap<u64, Channel>,
    rooms: HashMap<String, HashSet<u64>>,
}

/// What a delivery reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fanout {
    /// Frames queued.
    pub(crate) queued: u64,
    /// Connections whose queue overflowed (now closing as slow).
    pub(crate) overflowed: u64,
}

impl Fanout {
    fn add(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.queued += 1,
            Pushed::Overflowed => self.overflowed += 1,
            Pushed::Closed => {}
        }
    }
}

/// The connection registry of one edge.
#[derive(Debug)]
pub(crate) struct Comet {
    buckets: Box<[RwLock<Bucket>]>,
    next: AtomicU64,
    rooms: Mutex<HashMap<String, u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Comet {
    /// A comet with `buckets` buckets (rounded to a power of two, 1 to 1024).
    pub(crate) fn new(buckets: usize) -> Self {
        let n = buckets
            .clamp(1, MAX_BUCKETS)
            .next_power_of_two()
            .min(MAX_BUCKETS);
        Comet {
            buckets: (0..n).map(|_| RwLock::new(Bucket::default())).collect(),
            next: AtomicU64::new(1),
            rooms: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// A fresh connection id for `device`: its low bits pick the device's bucket.
    pub(crate) fn allocate(&self, device: &str) -> u64 {
        let bucket = self.hasher.hash_one(device) % self.buckets.len() as u64;
        (self.next.fetch_add(1, Ordering::Relaxed) << 10) | bucket
    }

    fn bucket(&self, id: u64) -> &RwLock<Bucket> {
        &self.buckets[(id & BUCKET_MASK) as usize % self.buckets.len()]
    }

    /// Adds an authenticated connection.
    pub(crate) fn insert(&self, id: u64, outbox: Arc<Outbox>) {
        self.bucket(id).write().conns.insert(
            id,
            Channel {
                outbox,
                rooms: Vec::new(),
            },
        );
    }

    /// Removes a connection; returns the rooms whose edge-wide membership dropped to zero.
    pub(crate) fn remove(&self, id: u64) -> Vec<String> {
        let rooms = {
            let mut b = self.bucket(id).write();
            let Some(ch) = b.conns.remove(&id) else {
                return Vec::new();
            };
            for room in &ch.rooms {
                if let Some(members) = b.rooms.get_mut(room) {
                    members.remove(&id);
                    if members.is_empty() {
                        b.rooms.remove(room);
                    }
                }
            }
            ch.rooms
        };
        rooms
            .into_iter()
            .filter(|r| self.count_room(r, -1) == 0)
            .collect()
    }

    /// Adds `id` to `room`. Returns `(joined, edge_total)`: whether it was new, and the
    /// room's members on this edge now.
    pub(crate) fn join(&self, id: u64, room: &str) -> Option<(bool, u64)> {
        {
            let mut b = self.bucket(id).write();
            let ch = b.conns.get_mut(&id)?;
            if ch.rooms.iter().any(|r| r == room) {
                drop(b);
                return Some((false, self.room_total(room)));
            }
            ch.rooms.push(room.to_owned());
            b.rooms.entry(room.to_owned()).or_default().insert(id);
        }
        Some((true, self.count_room(room, 1)))
    }

    /// Removes `id` from `room`. Returns `(left, edge_total)`.
    pub(crate) fn leave(&self, id: u64, room: &str) -> Option<(bool, u64)> {
        {
            let mut b = self.bucket(id).write();
            let ch = b.conns.get_mut(&id)?;
            let Some(pos) = ch.rooms.iter().position(|r| r == room) else {
                drop(b);
                return Some((false, self.room_total(room)));
            };
            ch.rooms.swap_remove(pos);
            if let Some(members) = b.rooms.get_mut(room) {
                members.remove(&id);
                if members.is_empty() {
                    b.rooms.remove(room);
                }
            }
        }
        Some((true, self.count_room(room, -1)))
    }

    /// The rooms of a connection.
    pub(crate) fn rooms_of(&self, id: u64) -> Vec<String> {
        self.bucket(id)
            .read()
            .conns
            .get(&id)
            .map(|c| c.rooms.clone())
            .unwrap_or_default()
    }

    fn count_room(&self, room: &str, delta: i64) -> u64 {
        let mut rooms = self.rooms.lock();
        let n = rooms.entry(room.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
        let total = *n;
        if total == 0 {
            rooms.remove(room);
        }
        total
    }

    fn room_total(&self, room: &str) -> u64 {
        self.rooms.lock().get(room).copied().unwrap_or(0)
    }

    /// Every room with members on this edge, with their counts.
    pub(crate) fn room_totals(&self) -> HashMap<String, u64> {
        self.rooms.lock().clone()
    }

    /// Connections held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.read().conns.len()).sum()
    }

    /// Queues `frames` for connection `id`.
    pub(crate) fn send(&self, id: u64, frames: Bytes) -> Fanout {
        let mut f = Fanout::default();
        if let Some(ch) = self.bucket(id).read().conns.get(&id) {
            f.add(ch.outbox.push(frames));
        }
        f
    }

    /// Queues `frames` for each of `ids`.
    pub(crate) fn send_many(&self, ids: &[u64], frames: &Bytes) -> Fanout {
        let mut f = Fanout::default();
        for &id in ids {
            if let Some(ch) = self.bucket(id).read().conns.get(&id) {
                f.add(ch.outbox.push(frames.clone()));
            }
        }
        f
    }

    /// Queues `frames` for every member of `room`.
    pub(crate) fn send_room(&self, room: &str, frames: &Bytes) -> Fanout {
        let mut f = Fanout::default();
        for bucket in self.buckets.iter() {
            let b = bucket.read();
            let Some(members) = b.rooms.get(room) else {
                continue;
            };
            for id in members {
                if let Some(ch) = b.conns.get(id) {
                    f.add(ch.outbox.push(frames.clone()));
                }
            }
        }
        f
    }

    /// Queues `frames` for every connection.
    pub(crate) fn send_all(&self, frames: &Bytes) -> Fanout {
        let mut f = Fanout::default();
        for bucket in self.buckets.iter() {
            for ch in bucket.read().conns.values() {
                f.add(ch.outbox.push(frames.clone()));
            }
        }
        f
    }

    /// Asks connection `id` to close.
    pub(crate) fn close(&self, id: u64, reason: CloseReason) -> bool {
        match self.bucket(id).read().conns.get(&id) {
            Some(ch) => {
                ch.outbox.close(reason);
                true
            }
            None => false,
        }
    }

    /// Asks every connection to close.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        for bucket in self.buckets.iter() {
            for ch in bucket.read().conns.values() {
                ch.outbox.close(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(comet: &Comet, device: &str) -> (u64, Arc<Outbox>) {
        let id = comet.allocate(device);
        let outbox = Arc::new(Outbox::new(8));
        comet.insert(id, outbox.clone());
        (id, outbox)
    }

    fn drained(o: &Outbox) -> usize {
        let mut batch = Vec::new();
        o.take(&mut batch);
        batch.len()
    }

    #[test]
    fn ids_pick_the_device_bucket() {
        let comet = Comet::new(16);
        let a = comet.allocate("phone");
        let b = comet.allocate("phone");
        assert_ne!(a, b);
        assert_eq!(a & BUCKET_MASK, b & BUCKET_MASK);
        assert!((a & BUCKET_MASK) < 16);
    }

    #[test]
    fn rooms_reach_members_only_and_track_edge_totals() {
        let comet = Comet::new(4);
        let (a, oa) = conn(&comet, "a");
        let (b, ob) = conn(&comet, "b");
        let (_c, oc) = conn(&comet, "c");
        assert_eq!(comet.join(a, "lobby"), Some((true, 1)));
        assert_eq!(comet.join(b, "lobby"), Some((true, 2)));
        assert_eq!(
            comet.join(b, "lobby"),
            Some((false, 2)),
            "joining twice is a no-op"
        );
        assert_eq!(
            comet.join(b, "games"),
            Some((true, 1)),
            "several rooms per connection"
        );
        let f = comet.send_room("lobby", &Bytes::from_static(b"x"));
        assert_eq!(f.queued, 2);
        assert_eq!((drained(&oa), drained(&ob), drained(&oc)), (1, 1, 0));
        assert_eq!(
            comet.room_totals(),
            HashMap::from([("lobby".into(), 2), ("games".into(), 1)])
        );
        assert_eq!(comet.leave(a, "lobby"), Some((true, 1)));
        assert_eq!(
            comet.remove(b),
            vec!["lobby".to_string(), "games".to_string()]
        );
        assert!(comet.room_totals().is_empty());
        assert_eq!(comet.join(99, "lobby"), None, "unknown connection");
    }

    #[test]
    fn deliveries_by_id_and_to_everyone() {
        let comet = Comet::new(8);
        let conns: Vec<_> = (0..20).map(|i| conn(&comet, &format!("d{i}"))).collect();
        let ids: Vec<u64> = conns.iter().take(5).map(|(id, _)| *id).collect();
        assert_eq!(comet.send_many(&ids, &Bytes::from_static(b"m")).queued, 5);
        assert_eq!(comet.send_all(&Bytes::from_static(b"all")).queued, 20);
        assert_eq!(drained(&conns[0].1), 2);
        assert_eq!(drained(&conns[19].1), 1);
        assert_eq!(comet.len(), 20);
        assert!(comet.close(ids[0], CloseReason::Kicked(4)));
        assert!(!comet.close(12345, CloseReason::Drain));
    }
}
