//! The edges connected to this core: their links, liveness, load and room membership.
//!
//! An edge registers over its link ([`crate::link`]) and gets an [`Edge`]: a bounded queue of
//! messages for it (deliveries, replies, kicks), what it reported last (connections by
//! transport, rooms with members), and the connections core authenticated on it. An edge
//! that stops heartbeating, or whose link breaks and does not come back within the timeout,
//! is dropped: it leaves the node list at once, and its sessions expire ([`EdgeRegistry::reap`]
//! hands the caller what to expire).

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roam_proto::internal::v1::EdgeDown;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::balancer::EdgeInfo;

/// What an edge said about itself when it registered.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EdgeMeta {
    /// Public addresses by transport name.
    pub(crate) addresses: HashMap<String, String>,
    /// Region name.
    pub(crate) region: String,
    /// Latitude, degrees.
    pub(crate) lat: f64,
    /// Longitude, degrees.
    pub(crate) lon: f64,
    /// Relative capacity.
    pub(crate) weight: u32,
}

/// A connection core authenticated on an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conn {
    /// The user.
    pub(crate) user: String,
    /// The device.
    pub(crate) device: String,
    /// The device's current heartbeat interval, seconds.
    pub(crate) heartbeat_secs: u32,
}

/// A connection's state on its edge, as core tracks it.
#[derive(Debug, Clone)]
enum ConnState {
    /// Its AUTH is being verified; `closed` if the edge reported it gone meanwhile.
    Pending { closed: bool },
    /// Authenticated.
    Open(Conn),
}

/// One registered edge.
#[derive(Debug)]
pub(crate) struct Edge {
    /// The edge's id.
    pub(crate) id: String,
    /// Distinguishes registrations of the same id (a re-registration replaces the old one).
    generation: u64,
    /// The edge process's instance id (`Register.instance`).
    instance: u64,
    meta: EdgeMeta,
    tx: mpsc::Sender<EdgeDown>,
    /// Fires when core drops the edge: its link ends.
    pub(crate) cancel: CancellationToken,
    last_heartbeat: Mutex<Instant>,
    connections: Mutex<HashMap<String, u64>>,
    rooms: Mutex<HashMap<String, u64>>,
    conns: Mutex<HashMap<u64, ConnState>>,
}

impl Edge {
    /// The queue of messages for this edge.
    pub(crate) fn sender(&self) -> &mpsc::Sender<EdgeDown> {
        &self.tx
    }

    /// Messages waiting in the edge's queue.
    pub(crate) fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Records a heartbeat with the edge's load report.
    pub(crate) fn heartbeat(
        &self,
        now: Instant,
        connections: HashMap<String, u64>,
        rooms: HashMap<String, u64>,
    ) {
        *self.last_heartbeat.lock() = now;
        *self.connections.lock() = connections;
        let mut r = self.rooms.lock();
        *r = rooms;
        r.retain(|_, n| *n > 0);
    }

    /// Records a room's membership on this edge.
    pub(crate) fn room_change(&self, room: String, members: u64) {
        let mut rooms = self.rooms.lock();
        if members == 0 {
            rooms.remove(&room);
        } else {
            rooms.insert(room, members);
        }
    }

    /// Members of `room` on this edge (0 if none).
    pub(crate) fn room_members(&self, room: &str) -> u64 {
        self.rooms.lock().get(room).copied().unwrap_or(0)
    }

    /// Open connections on this edge, summed over transports.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.lock().values().sum()
    }

    /// Open connections by transport.
    pub(crate) fn connections_by_transport(&self) -> HashMap<String, u64> {
        self.connections.lock().clone()
    }

    /// Rooms with members on this edge.
    pub(crate) fn rooms(&self) -> HashMap<String, u64> {
        self.rooms.lock().clone()
    }

    /// What the edge registered with.
    pub(crate) fn meta(&self) -> &EdgeMeta {
        &self.meta
    }

    /// A connection's AUTH is being verified: a disconnect reported meanwhile is remembered
    /// (see [`finish_connect`](Self::finish_connect)).
    pub(crate) fn begin_connect(&self, id: u64) {
        self.conns
            .lock()
            .insert(id, ConnState::Pending { closed: false });
    }

    /// The AUTH of connection `id` failed: forget it.
    pub(crate) fn abandon_connect(&self, id: u64) {
        let mut conns = self.conns.lock();
        if matches!(conns.get(&id), Some(ConnState::Pending { .. })) {
            conns.remove(&id);
        }
    }

    /// The connection authenticated. Returns `false` if the edge reported it closed while
    /// it was being verified: the caller must end the session it just recorded.
    pub(crate) fn finish_connect(&self, id: u64, conn: Conn) -> bool {
        let mut conns = self.conns.lock();
        if let Some(ConnState::Pending { closed: true }) = conns.get(&id) {
            conns.remove(&id);
            return false;
        }
        conns.insert(id, ConnState::Open(conn));
        true
    }

    /// Removes a connection, returning what core knew of it if it was authenticated (a
    /// connection still being verified is marked closed instead).
    pub(crate) fn remove_conn(&self, id: u64) -> Option<Conn> {
        let mut conns = self.conns.lock();
        match conns.get_mut(&id) {
            Some(ConnState::Pending { closed }) => {
                *closed = true;
                None
            }
            Some(ConnState::Open(_)) => match conns.remove(&id) {
                Some(ConnState::Open(c)) => Some(c),
                _ => None,
            },
            None => None,
        }
    }

    /// An authenticated connection.
    pub(crate) fn conn(&self, id: u64) -> Option<Conn> {
        match self.conns.lock().get(&id) {
            Some(ConnState::Open(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// Updates a connection's heartbeat interval.
    pub(crate) fn set_conn_heartbeat(&self, id: u64, secs: u32) {
        if let Some(ConnState::Open(c)) = self.conns.lock().get_mut(&id) {
            c.heartbeat_secs = secs;
        }
    }

    /// The balancer's view of this edge.
    pub(crate) fn info(&self) -> EdgeInfo {
        EdgeInfo {
            id: self.id.clone(),
            region: self.meta.region.clone(),
            lat: self.meta.lat,
            lon: self.meta.lon,
            weight: self.meta.weight,
            connections: self.connections(),
        }
    }
}

/// A live edge already has the id a newcomer registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlreadyLinked;

/// Every edge this core knows, live or recently lost.
#[derive(Debug)]
pub(crate) struct EdgeRegistry {
    live: RwLock<HashMap<String, Arc<Edge>>>,
    /// Edges whose link ended, with the deadline after which their sessions expire unless
    /// they register again.
    lost: Mutex<HashMap<String, Instant>>,
    next_generation: AtomicU64,
    queue_capacity: usize,
    timeout: Duration,
}

impl EdgeRegistry {
    /// A registry whose edges get queues of `queue_capacity` messages and are dropped after
    /// `timeout` without a heartbeat.
    pub(crate) fn new(queue_capacity: usize, timeout: Duration) -> Self {
        EdgeRegistry {
            live: RwLock::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            timeout,
        }
    }

    /// Registers an edge. Returns the edge and the receiving end of its queue, or
    /// [`AlreadyLinked`] while an edge of that id is live: a second process with the same id
    /// is refused and the live edge is left untouched. The same process (`instance`)
    /// registering again replaces its own link, which it has lost before core noticed: the
    /// old link is cancelled. (Another process takes the id once the old link has ended, or
    /// once core dropped it as silent.)
    pub(crate) fn register(
        &self,
        id: String,
        instance: u64,
        meta: EdgeMeta,
        now: Instant,
    ) -> Result<(Arc<Edge>, mpsc::Receiver<EdgeDown>), AlreadyLinked> {
        let mut live = self.live.write();
        match live.get(&id) {
            Some(old) if old.instance == instance => old.cancel.cancel(),
            Some(_) => return Err(AlreadyLinked),
            None => {}
        }
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let edge = Arc::new(Edge {
            id: id.clone(),
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            instance,
            meta,
            tx,
            cancel: CancellationToken::new(),
            last_heartbeat: Mutex::new(now),
            connections: Mutex::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        });
        self.lost.lock().remove(&id);
        live.insert(id, edge.clone());
        Ok((edge, rx))
    }

    /// The link of `edge` ended: it leaves the live set now; its sessions expire after the
    /// timeout unless it registers again.
    pub(crate) fn link_ended(&self, edge: &Edge, now: Instant) {
        let mut live = self.live.write();
        if live
            .get(&edge.id)
            .is_some_and(|e| e.generation == edge.generation)
        {
            live.remove(&edge.id);
            self.lost.lock().insert(edge.id.clone(), now + self.timeout);
        }
    }

    /// Whether `edge` is the live link of its id (not ended, not replaced).
    pub(crate) fn is_current(&self, edge: &Edge) -> bool {
        !edge.cancel.is_cancelled()
            && self
                .live
                .read()
                .get(&edge.id)
                .is_some_and(|e| e.generation == edge.generation)
    }

    /// A live edge by id.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Edge>> {
        self.live.read().get(id).cloned()
    }

    /// Every live edge.
    pub(crate) fn live(&self) -> Vec<Arc<Edge>> {
        self.live.read().values().cloned().collect()
    }

    /// Drops edges silent for longer than the timeout and returns the ids whose sessions
    /// must now expire (those, and lost edges past their deadline).
    pub(crate) fn reap(&self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        {
            let mut live = self.live.write();
            live.retain(|id, edge| {
                let silent = now.saturating_duration_since(*edge.last_heartbeat.lock());
                if silent > self.timeout {
                    edge.cancel.cancel();
                    expired.push(id.clone());
                    false
                } else {
                    true
                }
            });
        }
        let mut lost = self.lost.lock();
        lost.retain(|id, deadline| {
            if now >= *deadline {
                expired.push(id.clone());
                false
            } else {
                true
            }
        });
        expired
    }

    /// Hands `id` to the next [`reap`](Self::reap) again (its expiry failed), unless it
    /// registered again meanwhile.
    pub(crate) fn expire_again(&self, id: String, now: Instant) {
        if self.get(&id).is_none() {
            self.lost.lock().insert(id, now);
        }
    }

    /// Ends every edge's link (on shutdown); their sessions stay until they expire.
    pub(crate) fn close_all(&self) {
        for edge in self.live() {
            edge.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EdgeMeta {
        EdgeMeta {
            weight: 1,
            ..EdgeMeta::default()
        }
    }

    #[test]
    fn silent_edges_are_reaped_and_lost_ones_expire_after_the_timeout() {
        let t0 = Instant::now();
        let reg = EdgeRegistry::new(8, Duration::from_secs(10));
        let (a, _rx_a) = reg.register("a".into(), 1, meta(), t0).unwrap();
        let (b, _rx_b) = reg.register("b".into(), 1, meta(), t0).unwrap();
        b.heartbeat(t0 + Duration::from_secs(8), HashMap::new(), HashMap::new());
        assert!(reg.reap(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            reg.reap(t0 + Duration::from_secs(11)),
            vec!["a".to_string()]
        );
        assert!(a.cancel.is_cancelled());
        assert_eq!(reg.live().len(), 1);

        reg.link_ended(&b, t0 + Duration::from_secs(12));
        assert!(
            reg.get("b").is_none(),
            "a lost edge leaves the node list at once"
        );
        assert!(
            reg.reap(t0 + Duration::from_secs(21)).is_empty(),
            "but keeps its sessions a while"
        );
        assert_eq!(
            reg.reap(t0 + Duration::from_secs(22)),
            vec!["b".to_string()]
        );
    }

    #[test]
    fn a_re_registration_after_the_link_ended_cancels_its_expiry() {
        let t0 = Instant::now();
        let reg = EdgeRegistry::new(8, Duration::from_secs(10));
        let (old, _rx) = reg.register("a".into(), 1, meta(), t0).unwrap();
        reg.link_ended(&old, t0);
        let (new, _rx2) = reg
            .register("a".into(), 1, meta(), t0 + Duration::from_secs(1))
            .unwrap();
        assert!(reg.reap(t0 + Duration::from_secs(10)).is_empty());
        // The old link's late end does not remove the new registration.
        reg.link_ended(&old, t0 + Duration::from_secs(2));
        assert!(Arc::ptr_eq(&reg.get("a").unwrap(), &new));
    }

    #[test]
    fn a_second_registration_of_a_live_id_is_refused_and_the_live_edge_kept() {
        let t0 = Instant::now();
        let reg = EdgeRegistry::new(8, Duration::from_secs(10));
        let (live, _rx) = reg.register("a".into(), 1, meta(), t0).unwrap();
        let newcomer = EdgeMeta {
            region: "elsewhere".into(),
            ..meta()
        };
        assert_eq!(
            reg.register("a".into(), 2, newcomer, t0 + Duration::from_secs(1))
                .map(|_| ()),
            Err(AlreadyLinked)
        );
        assert!(!live.cancel.is_cancelled(), "the live link is untouched");
        assert!(Arc::ptr_eq(&reg.get("a").unwrap(), &live));
        assert_eq!(reg.get("a").unwrap().meta().region, "");
        // Once core dropped the silent edge, the id is free again.
        assert_eq!(
            reg.reap(t0 + Duration::from_secs(11)),
            vec!["a".to_string()]
        );
        assert!(
            reg.register("a".into(), 1, meta(), t0 + Duration::from_secs(12))
                .is_ok()
        );
    }

    #[test]
    fn the_same_instance_registering_again_replaces_its_stale_link() {
        let t0 = Instant::now();
        let reg = EdgeRegistry::new(8, Duration::from_secs(10));
        let (stale, _rx) = reg.register("a".into(), 7, meta(), t0).unwrap();
        let (fresh, _rx2) = reg
            .register("a".into(), 7, meta(), t0 + Duration::from_secs(1))
            .unwrap();
        assert!(stale.cancel.is_cancelled(), "the stale link ends");
        assert!(!fresh.cancel.is_cancelled());
        assert!(Arc::ptr_eq(&reg.get("a").unwrap(), &fresh));
        // The stale link's end, when it comes, leaves the new one alone.
        reg.link_ended(&stale, t0 + Duration::from_secs(2));
        assert!(Arc::ptr_eq(&reg.get("a").unwrap(), &fresh));
        assert!(reg.reap(t0 + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn a_disconnect_during_auth_is_not_lost() {
        let reg = EdgeRegistry::new(2, Duration::from_secs(10));
        let (e, _rx) = reg.register("a".into(), 1, meta(), Instant::now()).unwrap();
        let conn = || Conn {
            user: "u".into(),
            device: "d".into(),
            heartbeat_secs: 60,
        };
        e.begin_connect(1);
        assert_eq!(e.remove_conn(1), None);
        assert!(!e.finish_connect(1, conn()), "closed while verifying");
        assert_eq!(e.conn(1), None);
        e.begin_connect(2);
        assert!(e.finish_connect(2, conn()));
        assert_eq!(e.remove_conn(2), Some(conn()));
        e.begin_connect(3);
        e.abandon_connect(3);
        assert!(e.finish_connect(3, conn()), "a fresh entry after abandon");
    }

    #[test]
    fn rooms_and_load_follow_reports() {
        let reg = EdgeRegistry::new(2, Duration::from_secs(10));
        let (e, _rx) = reg.register("a".into(), 1, meta(), Instant::now()).unwrap();
        e.room_change("lobby".into(), 3);
        e.room_change("quiet".into(), 1);
        e.room_change("quiet".into(), 0);
        assert_eq!(e.rooms(), HashMap::from([("lobby".to_string(), 3)]));
        e.heartbeat(
            Instant::now(),
            HashMap::from([("ws".into(), 5), ("raw".into(), 2)]),
            HashMap::new(),
        );
        assert_eq!(e.connections(), 7);
        assert_eq!(
            e.room_members("lobby"),
            0,
            "a heartbeat's room report replaces the map"
        );
        assert_eq!(e.queue_depth(), 0);
    }
}
