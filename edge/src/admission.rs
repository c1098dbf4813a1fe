//! Admission: what a TCP connection must pass before any work is spent on it.
//!
//! One [`Admission`] is shared by the client port (8443) and the raw port (8444); the admin
//! port (8080) has its own. At accept, in this order, cheapest first:
//!
//! 1. the source address's share (`limits.max_conns_per_ip`; 0: no cap) — over it the
//!    socket is closed at once;
//! 2. a connection slot (`edge.max_connections`, or the admin port's cap) — over it the
//!    connection is still told why (DISCONNECT `LIMIT` / HTTP 503 with `retry-after`, after
//!    its handshake) and closed;
//! 3. a handshake permit (`limits.max_handshakes` in flight, and at most
//!    `limits.max_handshakes_per_ip` of them from one source), held only while the TLS
//!    handshake runs — over either the socket is closed at once. The per-source share keeps
//!    a few hosts holding sockets that never finish a handshake from taking every permit.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one subscriber's prefix; an IPv4-mapped
//! IPv6 address counts as its IPv4 address), so a host cannot multiply its shares by
//! picking addresses from its own prefix.
//!
//! The [`Ticket`] of an admitted connection holds its source share and its slot for as long
//! as the connection lives — a WebSocket upgraded out of an HTTP/1.1 connection keeps a
//! clone (`ConnTicket`) — so one TCP connection holds one slot however many requests or
//! HTTP/2 streams it carries. A virtual connection, which outlives the requests and TCP
//! connections that made it, is admitted as a connection of its own (source share and slot)
//! before its AUTH goes to core.
//!
//! Inside a connection the ticket counts its open requests (HTTP/2 streams: an HTTP/2
//! connection with none for the idle time is closed, see `Ticket::idle_for`) and the
//! sessions it carries (`Ticket::session`): at most `edge.max_sessions_per_conn`, of which
//! at most `edge.max_unauthenticated_per_conn` not yet authenticated. Every refusal is
//! counted in `roam_refused_connections_total` by reason.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The label of a refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabel {
    /// `handshakes`, `handshakes_per_ip`, `per_ip`, `max_connections`, `sessions_per_conn`,
    /// `unauthenticated_per_conn`, `admin`, `admin_per_ip`, `internal`, `internal_per_ip` or
    /// `internal_tls`.
    pub(crate) reason: &'static str,
}

/// Connections refused at admission, by reason (cheap to clone: a shared handle).
#[derive(Debug, Clone, Default)]
pub struct Refusals(Family<RefusalLabel, Counter>);

impl Refusals {
    /// Creates the counter and registers it as `roam_refused_connections_total{reason}`.
    pub fn register(registry: &mut Registry) -> Self {
        let r = Refusals::default();
        registry.register(
            "roam_refused_connections",
            "Connections refused at admission, by reason (handshakes, handshakes_per_ip, per_ip, max_connections, sessions_per_conn, unauthenticated_per_conn, admin, admin_per_ip, internal, internal_per_ip, internal_tls)",
            r.0.clone(),
        );
        r
    }

    /// Counts one refusal.
    pub fn count(&self, reason: &'static str) {
        self.0.get_or_create(&RefusalLabel { reason }).inc();
    }

    /// Refusals so far for `reason`.
    #[cfg(test)]
    pub(crate) fn get(&self, reason: &'static str) -> u64 {
        self.0.get_or_create(&RefusalLabel { reason }).get()
    }
}

/// The caps of one [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Connections (slots) at once.
    pub max_connections: usize,
    /// TLS handshakes in flight at once (0: no cap).
    pub max_handshakes: usize,
    /// Connections at once from one source address (0: no cap).
    pub max_conns_per_ip: usize,
    /// TLS handshakes in flight at once from one source address (0: no cap).
    pub max_handshakes_per_ip: usize,
    /// The reason counted when no slot is left (`max_connections`, `admin`, `internal`).
    pub slot_reason: &'static str,
    /// The reason counted when a source is over its share (`per_ip`, `admin_per_ip`, ...).
    pub per_ip_reason: &'static str,
    /// Sessions (WebSockets, virtual connections while on the connection, gRPC streams) one
    /// connection may carry at once (0: no cap).
    pub max_sessions_per_conn: u32,
    /// Of those, sessions not yet authenticated (0: no cap).
    pub max_unauthenticated_per_conn: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_connections: 100_000,
            max_handshakes: 4096,
            max_conns_per_ip: 1000,
            max_handshakes_per_ip: 64,
            slot_reason: "max_connections",
            per_ip_reason: "per_ip",
            max_sessions_per_conn: 100,
            max_unauthenticated_per_conn: 8,
        }
    }
}

/// What one source holds now.
#[derive(Debug, Default)]
struct Share {
    conns: usize,
    handshakes: usize,
}

/// The source a peer address counts as: an IPv4 address, or an IPv6 /64 (an IPv4-mapped
/// address counts as its IPv4 address).
fn source(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// Admission state shared by the listeners it guards.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    open: AtomicUsize,
    handshakes: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, Share>>,
    refusals: Refusals,
    /// The origin of the tickets' idle clocks.
    epoch: Instant,
}

/// Why a connection was not admitted at all (its socket is closed at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source address holds `max_conns_per_ip` connections already.
    PerIp,
}

impl Admission {
    /// A new admission with `config`, counting refusals in `refusals`.
    pub fn new(config: AdmissionConfig, refusals: Refusals) -> Arc<Self> {
        Arc::new(Admission {
            config,
            open: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refusals,
            epoch: Instant::now(),
        })
    }

    /// Milliseconds since this admission began (the tickets' idle clock).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Gives back what `change` takes from `source`'s share; forgets the source once it
    /// holds nothing.
    fn release(&self, source: IpAddr, change: impl FnOnce(&mut Share)) {
        let mut map = self.per_ip.lock();
        if let Some(share) = map.get_mut(&source) {
            change(share);
            if share.conns == 0 && share.handshakes == 0 {
                map.remove(&source);
            }
        }
    }

    /// Admits a connection from `peer` at accept: its source share and, if one is left, a
    /// slot ([`Ticket::has_slot`]; without one the connection is to be told so and closed).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let shares_source = self.config.max_conns_per_ip > 0;
        if shares_source {
            let mut map = self.per_ip.lock();
            let share = map.entry(source(peer)).or_default();
            if share.conns >= self.config.max_conns_per_ip {
                drop(map);
                self.refusals.count(self.config.per_ip_reason);
                return Err(Refused::PerIp);
            }
            share.conns += 1;
        }
        let slot = self.slot();
        if !slot {
            self.refusals.count(self.config.slot_reason);
        }
        Ok(Ticket {
            idle_since_ms: AtomicU64::new(self.now_ms()),
            admission: self.clone(),
            shares_source,
            peer,
            slot,
            requested: AtomicBool::new(false),
            streams: AtomicU32::new(0),
            sessions: AtomicU32::new(0),
            unauthenticated: AtomicU32::new(0),
        })
    }

    /// A connection whose source address is unknown: a slot (if one is left), no source
    /// share.
    pub(crate) fn admit_without_source(self: &Arc<Self>) -> Ticket {
        let slot = self.slot();
        if !slot {
            self.refusals.count(self.config.slot_reason);
        }
        Ticket {
            idle_since_ms: AtomicU64::new(self.now_ms()),
            admission: self.clone(),
            shares_source: false,
            peer: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            slot,
            requested: AtomicBool::new(false),
            streams: AtomicU32::new(0),
            sessions: AtomicU32::new(0),
            unauthenticated: AtomicU32::new(0),
        }
    }

    /// Takes a slot if one is left (the ticket that gets it gives it back on drop).
    fn slot(&self) -> bool {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        if n < self.config.max_connections {
            return true;
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// A permit for one TLS handshake from `peer`, or `None` (counted) when
    /// `max_handshakes` are under way, or `max_handshakes_per_ip` from its source: the
    /// connection is then closed at once.
    pub(crate) fn handshake(self: &Arc<Self>, peer: IpAddr) -> Option<HandshakePermit> {
        let n = self.handshakes.fetch_add(1, Ordering::Relaxed);
        let mut permit = HandshakePermit {
            admission: self.clone(),
            source: None,
        };
        if self.config.max_handshakes > 0 && n >= self.config.max_handshakes {
            drop(permit);
            self.refusals.count("handshakes");
            return None;
        }
        if self.config.max_handshakes_per_ip > 0 {
            let source = source(peer);
            let mut map = self.per_ip.lock();
            let share = map.entry(source).or_default();
            if share.handshakes >= self.config.max_handshakes_per_ip {
                drop(map);
                drop(permit);
                self.refusals.count("handshakes_per_ip");
                return None;
            }
            share.handshakes += 1;
            permit.source = Some(source);
        }
        Some(permit)
    }
}

/// A handshake in flight, released on drop.
#[derive(Debug)]
pub(crate) struct HandshakePermit {
    admission: Arc<Admission>,
    /// The source whose handshake share it holds (when that share is capped).
    source: Option<IpAddr>,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.admission.handshakes.fetch_sub(1, Ordering::Relaxed);
        if let Some(source) = self.source {
            self.admission.release(source, |s| s.handshakes -= 1);
        }
    }
}

/// An admitted connection's share of its source address and (if it got one) its slot,
/// released on drop.
///
/// Every idle connection holds one for its life (inline in the raw port's task, behind an
/// `Arc` on the client port), so it is kept small: flags, not copies of what `peer` and the
/// admission already say (the source is derived from `peer` again on release, the slot is
/// given back to `admission`). `the_per_connection_state_stays_small` pins its size.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
    /// It holds a share of its source's `max_conns_per_ip` (the cap was on at admission).
    shares_source: bool,
    /// It holds a slot of `max_connections`.
    slot: bool,
    requested: AtomicBool,
    /// Requests (HTTP/2 streams) open now, WebSockets included.
    streams: AtomicU32,
    /// When `streams` last fell to zero (or the connection was admitted), on the
    /// admission's clock.
    idle_since_ms: AtomicU64,
    /// Sessions carried now, and how many of them are not yet authenticated.
    sessions: AtomicU32,
    unauthenticated: AtomicU32,
}

/// Why a session was refused on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionRefused {
    /// The connection carries `edge.max_sessions_per_conn` sessions already.
    PerConn,
    /// It carries `edge.max_unauthenticated_per_conn` unauthenticated ones already.
    Unauthenticated,
}

impl Ticket {
    /// The peer's address.
    pub(crate) fn peer(&self) -> IpAddr {
        self.peer
    }

    /// How long the connection has had no open request, or `None` while one is open.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(
            self.admission.now_ms().saturating_sub(since),
        ))
    }

    /// A session on this connection, not yet authenticated ([`SessionPermit::authenticated`]
    /// moves it out of the unauthenticated budget); refused (and counted) over either cap.
    pub(crate) fn session(self: &Arc<Self>) -> Result<SessionPermit, SessionRefused> {
        let config = &self.admission.config;
        let take = |counter: &AtomicU32, max: u32| {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (max == 0 || n < max).then_some(n + 1)
                })
                .is_ok()
        };
        if !take(&self.sessions, config.max_sessions_per_conn) {
            self.admission.refusals.count("sessions_per_conn");
            return Err(SessionRefused::PerConn);
        }
        if !take(&self.unauthenticated, config.max_unauthenticated_per_conn) {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            self.admission.refusals.count("unauthenticated_per_conn");
            return Err(SessionRefused::Unauthenticated);
        }
        Ok(SessionPermit {
            ticket: self.clone(),
            authenticated: false,
            release_on_auth: false,
        })
    }
    /// Whether the connection got a slot (else it is to be refused politely and closed).
    pub fn has_slot(&self) -> bool {
        self.slot
    }

    /// Marks the connection as having sent a complete request (the internal port marks it
    /// on its first call with the key; the HTTP listeners through `TicketLayer`).
    pub fn mark_requested(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// Whether the connection has sent a complete request (see `TicketLayer`).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.slot {
            self.admission.open.fetch_sub(1, Ordering::Relaxed);
        }
        if self.shares_source {
            self.admission.release(source(self.peer), |s| s.conns -= 1);
        }
    }
}

/// One session on a connection ([`Ticket::session`]), released on drop.
#[derive(Debug)]
pub(crate) struct SessionPermit {
    ticket: Arc<Ticket>,
    authenticated: bool,
    /// Released once authenticated (a long-polled virtual connection leaves the connection
    /// that opened it when its opening request ends). Here rather than in [`Hold`], where
    /// it would widen every connection's driver by a word.
    pub(crate) release_on_auth: bool,
}

impl SessionPermit {
    /// The session authenticated: it leaves the connection's unauthenticated budget.
    pub(crate) fn authenticated(&mut self) {
        if !std::mem::replace(&mut self.authenticated, true) {
            self.ticket.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.authenticated();
        self.ticket.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection's driver holds for it besides its transport: a virtual connection's own
/// admission (source share and slot), and the session on the connection that carries it.
/// Part of every connection's driver (empty on the raw port): kept to three words.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    /// A virtual connection's own ticket.
    pub(crate) own: Option<Box<Ticket>>,
    /// Its session on the carrying connection.
    pub(crate) session: Option<SessionPermit>,
}

impl Hold {
    /// The session authenticated.
    pub(crate) fn authenticated(&mut self) {
        if self.session.as_ref().is_some_and(|s| s.release_on_auth) {
            self.session = None;
        } else if let Some(s) = &mut self.session {
            s.authenticated();
        }
    }
}

/// One open request (HTTP/2 stream) of a connection, counted in its [`Ticket`] while it
/// lives: the request's response body holds it, a WebSocket's task too.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    ticket: Arc<Ticket>,
}

impl StreamGuard {
    fn new(ticket: Arc<Ticket>) -> Self {
        ticket.streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard { ticket }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // The clock first: a reader that sees no stream open sees when the last one ended.
        let now = self.ticket.admission.now_ms();
        self.ticket.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        self.ticket.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request extension carrying its connection's [`Ticket`] and the request's stream: what
/// outlives the request (a WebSocket) keeps a clone, and with it the slot and the stream.
#[derive(Debug, Clone)]
pub(crate) struct ConnTicket(pub Arc<StreamGuard>);

impl ConnTicket {
    /// The connection's ticket.
    pub(crate) fn ticket(&self) -> &Arc<Ticket> {
        &self.0.ticket
    }
}

/// The per-connection layer of the HTTP listeners: marks the connection's [`Ticket`] when
/// a complete request arrives (hyper calls the service once the request's head is in: the
/// first-request deadline is then met), counts the request as an open stream until its
/// response body is done, and hands the request a [`ConnTicket`].
#[derive(Debug, Clone)]
pub(crate) struct TicketLayer(pub Arc<Ticket>);

impl<S> tower::Layer<S> for TicketLayer {
    type Service = TicketService<S>;

    fn layer(&self, inner: S) -> TicketService<S> {
        TicketService {
            ticket: self.0.clone(),
            inner,
        }
    }
}

/// See [`TicketLayer`].
#[derive(Debug, Clone)]
pub(crate) struct TicketService<S> {
    ticket: Arc<Ticket>,
    inner: S,
}

type Response = axum::http::Response<axum::body::Body>;

impl<S, B> tower::Service<axum::http::Request<B>> for TicketService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        self.ticket.requested.store(true, Ordering::Relaxed);
        let stream = Arc::new(StreamGuard::new(self.ticket.clone()));
        request.extensions_mut().insert(ConnTicket(stream.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // The stream is open until its response body is done (or dropped).
            Ok(response.map(|body| {
                axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                    let _open = &stream;
                    frame
                }))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_connections: usize, max_handshakes: usize, per_ip: usize) -> Arc<Admission> {
        Admission::new(
            AdmissionConfig {
                max_connections,
                max_handshakes,
                max_conns_per_ip: per_ip,
                max_handshakes_per_ip: 0,
                ..AdmissionConfig::default()
            },
            Refusals::default(),
        )
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    /// Every idle connection holds a ticket (inline in the raw port's task, in an `Arc` on
    /// the client port) and its driver a `Hold`: issues 10 and 14 added them at 72 and 32
    /// bytes, part of the idle connection's growth. Flags instead of copies (the source
    /// derived from `peer`, the slot given back to the admission) and the poll flag in the
    /// session permit made them 48 and 24.
    #[test]
    fn the_per_connection_state_stays_small() {
        let (ticket, hold) = (std::mem::size_of::<Ticket>(), std::mem::size_of::<Hold>());
        assert!(ticket <= 48, "Ticket grew to {ticket} bytes");
        assert!(hold <= 24, "Hold grew to {hold} bytes");
    }
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_source_address_holds_at_most_its_share_until_its_connections_end() {
        let a = admission(100, 0, 2);
        let one = a.admit(A).unwrap();
        let two = a.admit(A).unwrap();
        assert_eq!(a.admit(A).unwrap_err(), Refused::PerIp);
        assert!(a.admit(B).is_ok(), "another address is unaffected");
        drop(one);
        let three = a.admit(A).unwrap();
        assert!(two.has_slot() && three.has_slot());
        assert_eq!(a.refusals.get("per_ip"), 1);
        drop((two, three));
        assert!(
            a.per_ip.lock().is_empty(),
            "no entry is kept for an idle address"
        );
    }

    #[test]
    fn a_source_holds_at_most_its_share_of_handshakes() {
        let a = Admission::new(
            AdmissionConfig {
                max_handshakes: 100,
                max_handshakes_per_ip: 2,
                ..AdmissionConfig::default()
            },
            Refusals::default(),
        );
        let one = a.handshake(A).unwrap();
        let _two = a.handshake(A).unwrap();
        assert!(a.handshake(A).is_none(), "A's share is taken");
        assert!(a.handshake(B).is_some(), "another source is unaffected");
        assert_eq!(a.refusals.get("handshakes_per_ip"), 1);
        drop(one);
        assert!(
            a.handshake(A).is_some(),
            "a finished handshake frees its share"
        );
    }

    #[test]
    fn an_ipv6_prefix_is_one_source_and_a_mapped_ipv4_address_its_ipv4_one() {
        let a = Admission::new(
            AdmissionConfig {
                max_conns_per_ip: 1,
                ..AdmissionConfig::default()
            },
            Refusals::default(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _one = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            a.admit(ip("2001:db8:1:2:ffff::7")).is_err(),
            "the same /64 shares one source"
        );
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _v4 = a.admit(ip("192.0.2.9")).unwrap();
        assert!(
            a.admit(ip("::ffff:192.0.2.9")).is_err(),
            "mapped: the same source"
        );
        drop(_one);
        assert!(a.admit(ip("2001:db8:1:2::2")).is_ok());
    }

    #[test]
    fn no_per_ip_cap_when_zero() {
        let a = admission(100, 0, 0);
        let held: Vec<_> = (0..50).map(|_| a.admit(A).unwrap()).collect();
        assert_eq!(held.len(), 50);
        assert!(a.per_ip.lock().is_empty());
    }

    #[test]
    fn slots_are_taken_per_connection_and_released_with_it() {
        let a = admission(2, 0, 0);
        let one = a.admit(A).unwrap();
        let two = a.admit(B).unwrap();
        let three = a.admit(B).unwrap();
        assert!(one.has_slot() && two.has_slot());
        assert!(
            !three.has_slot(),
            "over the cap: admitted only to be told so"
        );
        assert_eq!(a.refusals.get("max_connections"), 1);
        drop(three);
        assert_eq!(a.open(), 2);
        drop(one);
        let again = a.admit(A).unwrap();
        assert!(again.has_slot());
        assert!(!a.slot(), "a virtual connection's slot counts too");
    }

    #[test]
    fn a_connection_carries_at_most_its_sessions_and_few_unauthenticated() {
        let a = Admission::new(
            AdmissionConfig {
                max_sessions_per_conn: 3,
                max_unauthenticated_per_conn: 2,
                ..AdmissionConfig::default()
            },
            Refusals::default(),
        );
        let conn = Arc::new(a.admit(A).unwrap());
        let mut one = conn.session().unwrap();
        let two = conn.session().unwrap();
        assert_eq!(
            conn.session().unwrap_err(),
            SessionRefused::Unauthenticated,
            "two unauthenticated sessions fill the budget"
        );
        one.authenticated();
        let mut three = conn.session().unwrap();
        three.authenticated();
        assert_eq!(conn.session().unwrap_err(), SessionRefused::PerConn);
        assert_eq!(a.refusals.get("unauthenticated_per_conn"), 1);
        assert_eq!(a.refusals.get("sessions_per_conn"), 1);
        drop(two);
        let _four = conn.session().unwrap();
        drop((one, three));
        assert_eq!(conn.sessions.load(Ordering::Relaxed), 1);
        assert_eq!(conn.unauthenticated.load(Ordering::Relaxed), 1);
        let other = Arc::new(a.admit(A).unwrap());
        assert!(other.session().is_ok(), "caps are per connection");
    }

    #[test]
    fn a_connection_is_idle_only_while_no_stream_is_open() {
        let a = admission(10, 0, 0);
        let conn = Arc::new(a.admit(A).unwrap());
        assert!(conn.idle_for().is_some(), "idle from accept");
        let stream = StreamGuard::new(conn.clone());
        let upgraded = ConnTicket(Arc::new(StreamGuard::new(conn.clone())));
        assert_eq!(conn.idle_for(), None);
        drop(stream);
        assert_eq!(conn.idle_for(), None, "a WebSocket's stream is still open");
        drop(upgraded);
        assert!(conn.idle_for().is_some_and(|d| d < Duration::from_secs(5)));
    }

    #[test]
    fn a_connection_of_unknown_source_takes_a_slot_and_no_share() {
        let a = admission(1, 0, 1);
        let unknown = a.admit_without_source();
        assert!(unknown.has_slot());
        assert!(a.per_ip.lock().is_empty(), "no source share taken");
        assert!(!a.admit_without_source().has_slot(), "the slot counts");
        assert_eq!(a.refusals.get("max_connections"), 1);
    }

    #[test]
    fn handshakes_in_flight_are_capped() {
        let a = admission(100, 2, 0);
        let one = a.handshake(A).unwrap();
        let _two = a.handshake(A).unwrap();
        assert!(a.handshake(A).is_none());
        assert_eq!(a.refusals.get("handshakes"), 1);
        drop(one);
        assert!(a.handshake(A).is_some());
    }
}
