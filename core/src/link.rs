//! The edge link, core's side: the `roam.internal.v1.EdgeLink/Link` gRPC stream.
//!
//! An edge opens one stream and registers first. Then it reports client connects (core
//! verifies the token, records the session, answers with the heartbeat interval, and kicks
//! the connection the new one replaces), disconnects, room membership changes, its
//! heartbeat with load, and the client ops it does not handle itself (core answers with
//! pre-encoded frames). Everything core sends an edge goes through that edge's bounded queue
//! ([`crate::edges`]), and the stream ends when core drops the edge.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};
use prost::Message as _;
use roam_messaging::SendRequest;
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::edge_link_server::{EdgeLink, EdgeLinkServer};
use roam_proto::internal::v1::{self as link, EdgeDown, EdgeUp, edge_down, edge_up};
use roam_proto::{Op, error_frame, frame_of};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use tokio::sync::{mpsc, oneshot};

use crate::auth::AuthError;
use crate::chat::Origin;
use crate::edges::{Conn, Edge, EdgeMeta};
use crate::metrics::KindLabel;
use crate::send_batch::{self, SendJob};
use crate::service::{Core, now_ms};
use crate::sessions::NewSession;

/// How long an edge has to send its `Register` after opening the stream.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The tonic service; build it with [`Core::link_service`].
#[derive(Debug, Clone)]
pub struct LinkService {
    core: Arc<Core>,
}

impl Core {
    /// The `EdgeLink` gRPC service over this core.
    pub fn link_service(self: &Arc<Self>) -> EdgeLinkServer<LinkService> {
        EdgeLinkServer::new(LinkService { core: self.clone() })
    }
}

type DownStream = Pin<Box<dyn Stream<Item = Result<EdgeDown, Status>> + Send>>;

#[tonic::async_trait]
impl EdgeLink for LinkService {
    type LinkStream = DownStream;

    async fn link(
        &self,
        request: Request<Streaming<EdgeUp>>,
    ) -> Result<Response<DownStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        let mut up = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, up.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register within 10 s"))??;
        let Some(EdgeUp {
            msg: Some(edge_up::Msg::Register(reg)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        if reg.edge_id.is_empty() {
            return Err(Status::invalid_argument("Register.edge_id is empty"));
        }
        let meta = EdgeMeta {
            addresses: reg.addresses,
            region: reg.region,
            lat: reg.lat,
            lon: reg.lon,
            weight: reg.weight,
        };
        let core = self.core.clone();
        let Ok((edge, rx)) =
            core.edges
                .register(reg.edge_id.clone(), reg.instance, meta, Instant::now())
        else {
            warn!(
                edge = %reg.edge_id,
                %peer,
                "refused a second link for a live edge id (give every edge its own edge.id)"
            );
            core.metrics
                .links_refused
                .get_or_create(&KindLabel {
                    kind: "edge_id_taken",
                })
                .inc();
            return Err(Status::already_exists(format!(
                "edge id {:?} is already linked to this core by another process; give every edge its own edge.id",
                reg.edge_id
            )));
        };
        // A new link starts with no clients (an edge closes its clients when it loses its
        // link), so whatever sessions the store still holds for this edge id are over: a
        // restarted edge's, or those whose disconnects were lost with the old link.
        match core.sessions.expire_edge(&edge.id, now_ms()).await {
            Ok(n) if n > 0 => {
                info!(edge = %edge.id, sessions = n, "sessions of the edge's previous link ended");
                core.metrics.sessions_expired.inc_by(n as u64);
            }
            Ok(_) => {}
            Err(e) => {
                core.edges.link_ended(&edge, Instant::now());
                warn!(edge = %edge.id, error = %e, "cannot end the sessions of the edge's previous link");
                return Err(Status::unavailable(format!("store: {e}")));
            }
        }
        info!(edge = %edge.id, "edge registered");
        core.metrics.edges.set(core.edges.live().len() as i64);
        let registered = down(edge_down::Msg::Registered(link::Registered {
            heartbeat_ms: core.options.edge_heartbeat.as_millis() as u32,
        }));
        edge.sender()
            .send(registered)
            .await
            .map_err(|_| Status::unavailable("edge dropped during registration"))?;
        let span = info_span!("edge_link", edge = %edge.id);
        tokio::spawn(read_up(core, edge.clone(), up).instrument(span));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(Ok)
            .take_until(edge.cancel.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

fn down(msg: edge_down::Msg) -> EdgeDown {
    EdgeDown { msg: Some(msg) }
}

/// Stored-messaging requests one connection may have waiting for its worker; more are
/// refused with `RATE_LIMITED`.
const CONN_QUEUE: usize = 256;

/// Reads the edge's messages until its stream ends or core drops it.
async fn read_up(core: Arc<Core>, edge: Arc<Edge>, mut up: Streaming<EdgeUp>) {
    // One worker per connection with stored-messaging requests: they are answered in the
    // order they were sent (SEND_ACKs in order), while connections proceed in parallel.
    // Their SENDs go to the link's batcher, which stores them in batches (group commit).
    let mut workers: HashMap<u64, mpsc::Sender<link::ClientOp>> = HashMap::new();
    let (batch_tx, batch_rx) = mpsc::channel(send_batch::QUEUE);
    tokio::spawn(send_batch::run(core.clone(), edge.clone(), batch_rx).in_current_span());
    loop {
        let msg = tokio::select! {
            _ = edge.cancel.cancelled() => break,
            msg = up.message() => msg,
        };
        let msg = match msg {
            Ok(Some(EdgeUp { msg: Some(msg) })) => msg,
            Ok(Some(EdgeUp { msg: None })) => continue,
            Ok(None) => break,
            Err(status) => {
                debug!(%status, "edge link broke");
                break;
            }
        };
        match msg {
            edge_up::Msg::Register(_) => warn!("a second Register on one link is ignored"),
            edge_up::Msg::Heartbeat(hb) => edge.heartbeat(Instant::now(), hb.connections, hb.rooms),
            edge_up::Msg::RoomChange(rc) => edge.room_change(rc.room, rc.members),
            // Connects touch the store: run them concurrently so one edge's burst of
            // reconnects is not serialised behind one commit each.
            edge_up::Msg::Connect(c) => {
                edge.begin_connect(c.conn_id);
                tokio::spawn(connect(core.clone(), edge.clone(), c).in_current_span());
            }
            edge_up::Msg::Disconnect(d) => {
                workers.remove(&d.conn_id);
                tokio::spawn(disconnect(core.clone(), edge.clone(), d).in_current_span());
            }
            edge_up::Msg::ClientOp(op)
                if matches!(
                    Op::from_code(op.op),
                    Some(Op::Send | Op::Sync | Op::Read | Op::PushAck | Op::Presence)
                ) =>
            {
                to_worker(&core, &edge, &mut workers, &batch_tx, op).await;
            }
            edge_up::Msg::ClientOp(op) => client_op(&core, &edge, op).await,
        }
    }
    drop(workers);
    drop(batch_tx);
    core.edges.link_ended(&edge, Instant::now());
    core.metrics.edges.set(core.edges.live().len() as i64);
    info!(edge = %edge.id, "edge link ended");
}

fn auth_failure(e: &AuthError) -> (pb::error::Code, &'static str) {
    match e {
        AuthError::Expired => (pb::error::Code::AuthExpired, "expired"),
        AuthError::NotYetValid => (pb::error::Code::AuthFailed, "not_yet_valid"),
        AuthError::TooLong { .. } => (pb::error::Code::AuthFailed, "lifetime"),
        AuthError::WrongAudience => (pb::error::Code::AuthFailed, "audience"),
        AuthError::BadSignature => (pb::error::Code::AuthFailed, "signature"),
        AuthError::WrongDevice => (pb::error::Code::AuthFailed, "device"),
        AuthError::Algorithm(_) => (pb::error::Code::AuthFailed, "algorithm"),
        AuthError::Missing => (pb::error::Code::AuthFailed, "missing"),
        AuthError::EmptyUser | AuthError::Malformed(_) => {
            (pb::error::Code::AuthFailed, "malformed")
        }
        AuthError::Secret(_) | AuthError::PublicKey { .. } => (pb::error::Code::Internal, "key"),
    }
}

async fn connect(core: Arc<Core>, edge: Arc<Edge>, c: link::Connect) {
    let refuse = |code: pb::error::Code, message: String| {
        down(edge_down::Msg::ConnectResult(link::ConnectResult {
            conn_id: c.conn_id,
            ok: false,
            error_code: code as i32,
            error_message: message,
            ..Default::default()
        }))
    };
    let conn_id = c.conn_id;
    let reply = if c.device_id.is_empty() {
        core.metrics
            .auth_failures
            .get_or_create(&KindLabel { kind: "device" })
            .inc();
        refuse(
            pb::error::Code::AuthFailed,
            "AUTH.device_id is required".into(),
        )
    } else {
        match core
            .verifier
            .verify(&c.token, &c.device_id, now_ms() / 1000)
        {
            Err(e) => {
                let (code, kind) = auth_failure(&e);
                core.metrics
                    .auth_failures
                    .get_or_create(&KindLabel { kind })
                    .inc();
                refuse(code, e.to_string())
            }
            Ok(claims) => accept(&core, &edge, &c, claims.sub)
                .await
                .unwrap_or_else(|e| {
                    warn!(error = %e, "cannot record a session");
                    core.metrics
                        .store_errors
                        .get_or_create(&KindLabel { kind: "connect" })
                        .inc();
                    refuse(
                        pb::error::Code::Unavailable,
                        "sessions are unavailable; retry".into(),
                    )
                }),
        }
    };
    if !matches!(&reply.msg, Some(edge_down::Msg::ConnectResult(r)) if r.ok) {
        edge.abandon_connect(conn_id);
    }
    let _ = edge.sender().send(reply).await;
}

/// Records the session of an authenticated connect on `edge` and answers it — unless the
/// link was replaced (or ended) meanwhile: its connection is gone with the old link, and a
/// session recorded for it would outlive it (the new link's start has already ended the
/// edge's sessions in the store). So the link must be the live one before the session is
/// recorded and still after; if it was replaced in between, the session just recorded is
/// ended again. (Replaced after the second check, the new link's start ends it.)
async fn accept(
    core: &Core,
    edge: &Arc<Edge>,
    c: &link::Connect,
    user: String,
) -> Result<EdgeDown, roam_store::StoreError> {
    let stale = || {
        down(edge_down::Msg::ConnectResult(link::ConnectResult {
            conn_id: c.conn_id,
            ok: false,
            error_code: pb::error::Code::Unavailable as i32,
            error_message: "the edge's link to core was replaced; reconnect".into(),
            ..Default::default()
        }))
    };
    if !core.edges.is_current(edge) {
        debug!(edge = %edge.id, conn = c.conn_id, "connect on a replaced link: not recorded");
        return Ok(stale());
    }
    let connected = core
        .sessions
        .connect(
            NewSession {
                user: &user,
                device: &c.device_id,
                edge: &edge.id,
                conn: c.conn_id,
                platform: &c.platform,
                transport: &c.transport,
            },
            now_ms(),
        )
        .await?;
    for old in connected.replaced {
        if let Some(e) = core.edges.get(&old.edge) {
            e.remove_conn(old.conn);
            let kick = down(edge_down::Msg::Kick(link::Kick {
                conn_id: old.conn,
                reason: pb::disconnect::Reason::Replaced as i32,
                message: "the device connected again elsewhere".into(),
            }));
            let _ = e.sender().send(kick).await;
        }
    }
    if !core.edges.is_current(edge) {
        debug!(edge = %edge.id, conn = c.conn_id, "link replaced while recording a connect: ended again");
        core.sessions
            .disconnect(&user, &c.device_id, &edge.id, c.conn_id, now_ms())
            .await?;
        return Ok(stale());
    }
    let policy = core.options.heartbeat;
    let heartbeat_secs = connected
        .heartbeat_secs
        .map_or(policy.initial(), |s| policy.clamp(s));
    let conn = Conn {
        user: user.clone(),
        device: c.device_id.clone(),
        heartbeat_secs,
    };
    if !edge.finish_connect(c.conn_id, conn) {
        // The client left while its AUTH was being verified: end the session just recorded.
        core.sessions
            .disconnect(&user, &c.device_id, &edge.id, c.conn_id, now_ms())
            .await?;
    }
    core.metrics.connects.inc();
    Ok(down(edge_down::Msg::ConnectResult(link::ConnectResult {
        conn_id: c.conn_id,
        ok: true,
        user_id: user,
        device_id: c.device_id.clone(),
        session_id: format!("{}/{}", edge.id, c.conn_id),
        heartbeat_secs,
        ..Default::default()
    })))
}

async fn disconnect(core: Arc<Core>, edge: Arc<Edge>, d: link::Disconnect) {
    let Some(conn) = edge.remove_conn(d.conn_id) else {
        return; // never authenticated, or already replaced
    };
    core.metrics.disconnects.inc();
    if d.reason == "idle" {
        // Lost to a heartbeat timeout: the interval was too long for this network.
        let secs = core.options.heartbeat.on_failure(conn.heartbeat_secs);
        if secs != conn.heartbeat_secs
            && let Err(e) = core
                .sessions
                .set_heartbeat(&conn.user, &conn.device, secs)
                .await
        {
            warn!(error = %e, "cannot store a heartbeat interval");
        }
    }
    if let Err(e) = core
        .sessions
        .disconnect(&conn.user, &conn.device, &edge.id, d.conn_id, now_ms())
        .await
    {
        // The session stays until its edge expires; presence is late, not wrong for long.
        warn!(error = %e, "cannot end a session");
        core.metrics
            .store_errors
            .get_or_create(&KindLabel { kind: "disconnect" })
            .inc();
    }
}

/// Hands a stored-messaging request to its connection's worker (started on first use).
async fn to_worker(
    core: &Arc<Core>,
    edge: &Arc<Edge>,
    workers: &mut HashMap<u64, mpsc::Sender<link::ClientOp>>,
    batches: &mpsc::Sender<SendJob>,
    op: link::ClientOp,
) {
    let conn_id = op.conn_id;
    let tx = workers.entry(conn_id).or_insert_with(|| {
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let worker = conn_worker(core.clone(), edge.clone(), conn_id, rx, batches.clone());
        tokio::spawn(worker.in_current_span());
        tx
    });
    match tx.try_send(op) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(op)) => {
            core.metrics
                .messaging_refused
                .get_or_create(&KindLabel { kind: "busy" })
                .inc();
            let frames = error_frame(
                op.seq,
                pb::error::Code::RateLimited,
                &format!(
                    "more than {CONN_QUEUE} requests waiting on this connection; wait for replies"
                ),
            );
            let reply = down(edge_down::Msg::OpReply(link::OpReply { conn_id, frames }));
            let _ = edge.sender().send(reply).await;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            workers.remove(&conn_id);
        }
    }
}

/// A reply of a connection's worker: ready, or a SEND's answer still to come from the
/// batcher.
type PendingReply = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// Answers one connection's stored-messaging requests in order, until its queue closes
/// (the connection ended, or the edge link did). SENDs go to the link's batcher without
/// waiting for each other (at most [`CONN_QUEUE`] unanswered); any other request first
/// waits until every SEND before it is answered, so it sees them stored.
async fn conn_worker(
    core: Arc<Core>,
    edge: Arc<Edge>,
    conn_id: u64,
    mut rx: mpsc::Receiver<link::ClientOp>,
    batches: mpsc::Sender<SendJob>,
) {
    let mut replies: FuturesOrdered<PendingReply> = FuturesOrdered::new();
    loop {
        let op = tokio::select! {
            biased;
            Some(frames) = replies.next(), if !replies.is_empty() => {
                if !reply(&edge, conn_id, frames).await {
                    return;
                }
                continue;
            }
            op = rx.recv(), if replies.len() < CONN_QUEUE => op,
        };
        let Some(op) = op else { return };
        let Some(conn) = edge.conn(conn_id) else {
            return; // the connection ended or was replaced meanwhile
        };
        let Some(kind) = Op::from_code(op.op) else {
            continue;
        };
        if kind == Op::Send {
            replies.push_back(hand_over(&conn, conn_id, op, &batches).await);
            continue;
        }
        while let Some(frames) = replies.next().await {
            if !reply(&edge, conn_id, frames).await {
                return;
            }
        }
        let origin = Origin {
            edge: &edge.id,
            conn: conn_id,
        };
        let frames = core.chat_op(&conn, origin, kind, op.seq, &op.body).await;
        if !reply(&edge, conn_id, frames).await {
            return;
        }
    }
}

/// Sends `frames` (nothing when empty) to connection `conn_id`; false when the link is gone.
async fn reply(edge: &Edge, conn_id: u64, frames: Bytes) -> bool {
    if frames.is_empty() {
        return true;
    }
    let reply = down(edge_down::Msg::OpReply(link::OpReply { conn_id, frames }));
    edge.sender().send(reply).await.is_ok()
}

/// Hands a SEND of `conn` to the batcher; the future is its SEND_ACK or ERROR frame.
async fn hand_over(
    conn: &Conn,
    conn_id: u64,
    op: link::ClientOp,
    batches: &mpsc::Sender<SendJob>,
) -> PendingReply {
    let s = match pb::Send::decode(op.body) {
        Ok(s) => s,
        Err(e) => {
            let frames = error_frame(
                op.seq,
                pb::error::Code::BadBody,
                &format!("the body is not a Send: {e}"),
            );
            return Box::pin(std::future::ready(frames));
        }
    };
    let (tx, answer) = oneshot::channel();
    let job = SendJob {
        req: SendRequest {
            from: conn.user.clone(),
            to: s.to,
            client_msg_id: s.client_msg_id,
            content: s.content,
            content_type: s.content_type,
        },
        conn: conn_id,
        seq: op.seq,
        reply: tx,
    };
    let seq = op.seq;
    if batches.send(job).await.is_err() {
        let frames = error_frame(
            seq,
            pb::error::Code::Unavailable,
            "stored messaging is shutting down; retry",
        );
        return Box::pin(std::future::ready(frames));
    }
    Box::pin(async move {
        answer.await.unwrap_or_else(|_| {
            error_frame(
                seq,
                pb::error::Code::Unavailable,
                "the send was not answered; retry with the same client_msg_id",
            )
        })
    })
}

async fn client_op(core: &Arc<Core>, edge: &Arc<Edge>, op: link::ClientOp) {
    let Some(conn) = edge.conn(op.conn_id) else {
        return; // the connection ended or was replaced meanwhile
    };
    let frames = match Op::from_code(op.op) {
        Some(Op::Heartbeat) => {
            let secs = core.options.heartbeat.on_success(conn.heartbeat_secs);
            if secs != conn.heartbeat_secs {
                edge.set_conn_heartbeat(op.conn_id, secs);
                let (core, user, device) = (core.clone(), conn.user, conn.device);
                tokio::spawn(async move {
                    if let Err(e) = core.sessions.set_heartbeat(&user, &device, secs).await {
                        warn!(error = %e, "cannot store a heartbeat interval");
                    }
                });
            }
            let reply = pb::HeartbeatReply {
                heartbeat_secs: secs,
            };
            match frame_of(Op::HeartbeatReply, op.seq, &reply) {
                Ok(f) => f,
                Err(_) => return,
            }
        }
        Some(other) => error_frame(
            op.seq,
            pb::error::Code::UnknownOp,
            &format!("{other} is not a request core handles"),
        ),
        None => error_frame(
            op.seq,
            pb::error::Code::UnknownOp,
            &format!("unknown op {}", op.op),
        ),
    };
    let reply = down(edge_down::Msg::OpReply(link::OpReply {
        conn_id: op.conn_id,
        frames,
    }));
    let _ = edge.sender().send(reply).await;
}

/// Connections by transport of every live edge, summed.
pub(crate) fn total_connections(core: &Core) -> (u64, HashMap<String, u64>) {
    let mut by_transport: HashMap<String, u64> = HashMap::new();
    for edge in core.edges.live() {
        for (t, n) in edge.connections_by_transport() {
            *by_transport.entry(t).or_default() += n;
        }
    }
    (by_transport.values().sum(), by_transport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Secret, Verifier};
    use crate::edges::EdgeMeta;
    use crate::metrics::CoreMetrics;
    use crate::service::CoreOptions;

    async fn core() -> (tempfile::TempDir, Arc<Core>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            roam_store::Store::open(&format!("embedded:{}", dir.path().join("s").display()))
                .await
                .unwrap();
        let metrics = CoreMetrics::register(&mut prometheus_client::registry::Registry::default());
        let verifier = Verifier::new(&Secret::from_bytes(vec![7; 32]));
        // Connects allocate no ids: a lazy channel that is never used.
        let ids = roam_idsvc::IdSource::connect_lazy(
            "http://127.0.0.1:1",
            std::time::Duration::from_secs(1),
            None,
        )
        .unwrap();
        let core = Core::new(
            store,
            ids,
            verifier,
            CoreOptions::default(),
            metrics,
            crate::webhook::Webhook::disabled(),
        );
        (dir, core)
    }

    fn connect(conn_id: u64) -> link::Connect {
        link::Connect {
            conn_id,
            device_id: "phone".into(),
            platform: "ios".into(),
            transport: "ws".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_connect_finishing_after_its_link_was_replaced_leaves_no_session() {
        let (_dir, core) = core().await;
        let (old, _old_rx) = core
            .edges
            .register("e1".into(), 1, EdgeMeta::default(), Instant::now())
            .unwrap();
        old.begin_connect(5);
        // The edge's link is replaced (the same process reconnected) while the connect's
        // token is being verified; the new link ends the edge id's sessions as it starts.
        let (_new, _new_rx) = core
            .edges
            .register("e1".into(), 1, EdgeMeta::default(), Instant::now())
            .unwrap();
        core.sessions.expire_edge("e1", now_ms()).await.unwrap();
        let reply = accept(&core, &old, &connect(5), "alice".into())
            .await
            .unwrap();
        assert!(
            matches!(reply.msg, Some(edge_down::Msg::ConnectResult(ref r)) if !r.ok),
            "{reply:?}"
        );
        let left = core
            .sessions
            .sessions_of_users(&["alice".to_owned()])
            .await
            .unwrap();
        assert!(left.is_empty(), "a ghost session: {left:?}");
    }

    #[tokio::test]
    async fn a_connect_on_the_live_link_is_recorded() {
        let (_dir, core) = core().await;
        let (edge, _rx) = core
            .edges
            .register("e1".into(), 1, EdgeMeta::default(), Instant::now())
            .unwrap();
        edge.begin_connect(5);
        let reply = accept(&core, &edge, &connect(5), "alice".into())
            .await
            .unwrap();
        assert!(matches!(reply.msg, Some(edge_down::Msg::ConnectResult(ref r)) if r.ok));
        let sessions = core
            .sessions
            .sessions_of_users(&["alice".to_owned()])
            .await
            .unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!((sessions[0].edge.as_str(), sessions[0].conn), ("e1", 5));
    }
}
