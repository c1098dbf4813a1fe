//! `roam bench roam-switch`: a phone switching networks mid-flow, over QUIC and over a TLS
//! WebSocket.
//!
//! A private `roam serve` (tokens and the API key come from its data directory, so `--target`
//! is refused). Two parts:
//!
//! 1. HTTP/3 connect time: `GET /v1/stream` on a new QUIC connection (full handshake) until
//!    AUTH_REPLY, then again on the same client endpoint, which resumes the TLS session and
//!    sends the opening as 0-RTT data: `h3_connect_new_ms`, `h3_connect_resumed_ms`, and
//!    `h3_0rtt_accepted` (1 if the server accepted the early data).
//! 2. The switch: a raw-QUIC client (`listen.raw_quic`) receives numbered pushes, one every
//!    10 ms for `--duration` seconds (default 3), sent through the business API. After a
//!    third of them it moves its UDP socket to 127.0.0.2, after two thirds to 127.0.0.3
//!    (QUIC connection migration, `Endpoint::rebind`). `quic_interruption_ms` is the longest
//!    gap between two consecutive pushes received around a move; `quic_lost` the pushes
//!    never received (0 expected); `quic_same_connection` 1 if no reconnect happened.
//!
//! 3. The same switch over a TLS WebSocket (`wss://…/v1/ws` from 127.0.0.1), which cannot
//!    migrate: stored messages (`POST /api/v1/messages` from `switch-peer`, one every 10 ms,
//!    each committed before the next) reach the client as pushes; at the same two points the
//!    client drops its TCP connection (no close handshake), stays offline until 3 more
//!    messages were stored (so only SYNC can bring them), connects again from 127.0.0.2
//!    (then 127.0.0.3), authenticates and SYNCs its inbox after the last seq it holds
//!    (paging until `has_more` is false), then reads pushes again. `tcp_interruption_ms` is
//!    the longest time from the network coming back (the reconnect starting) to the first
//!    message obtained after it (by SYNC or push): reconnect, TLS, upgrade, AUTH and SYNC —
//!    the offline wait itself, a property of the modelled outage, is not counted;
//!    `tcp_lost_after_sync` the messages never obtained (0 expected); `tcp_reconnects` the
//!    reconnections (2).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use roam_client::quic::{H3Stream, QuicRawConnection, client_endpoint};
use roam_client::ws::{ALPN_WS, WsConnection};
use roam_proto::Op;
use roam_proto::client::v1 as pb;

use crate::args::BenchArgs;
use crate::child::ChildServer;
use crate::report::Report;
use crate::server::{self, api_key, listener};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// One push every this long.
const PACE: Duration = Duration::from_millis(10);
/// Messages stored while the WebSocket client is offline, at each move.
const OFFLINE: usize = 3;
/// A push not received this long after the last one ends the wait.
const STALL: Duration = Duration::from_secs(5);

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    args.refuse_target("roam-switch", "tokens and the API key")?;
    if args.connections.is_some() || args.rate.is_some() || args.members.is_some() {
        bail!("roam-switch takes --duration only");
    }
    let duration = args.duration_or(3.0)?;
    let server = server::start(&std::env::current_exe()?, "")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive(&server, duration));
    let status = server.stop()?;
    if !status.success() {
        bail!("the server exited with {status}");
    }
    result
}

fn token(data_dir: &Path, user: &str) -> Result<String> {
    let secret = roam_core::auth::Secret::load_or_create(data_dir)?;
    Ok(secret.mint(user, None, 3600, server::unix_now()?)?)
}

async fn drive(server: &ChildServer, duration: Duration) -> Result<Report> {
    let ca = server.dev_cert();
    let mut report = Report::new("roam-switch");

    // 1. HTTP/3: a new connection, then a resumed one (0-RTT) on the same endpoint.
    let h3 = listener(server, "client_quic")?;
    let endpoint = client_endpoint(LOCAL, &ca, roam_tls::ALPN_QUIC)?;
    let alice = token(&server.data_dir(), "switch-h3")?;
    let mut connect_ms = Vec::new();
    let mut accepted = false;
    for round in 0..2 {
        let started = Instant::now();
        let mut stream =
            H3Stream::open_on(endpoint.clone(), h3, &alice, &format!("h3-{round}"), "").await?;
        let first = tokio::time::timeout(STALL, stream.next())
            .await
            .context("no AUTH_REPLY over HTTP/3")??;
        if first.map(|f| f.op_kind()) != Some(Some(Op::AuthReply)) {
            bail!("HTTP/3: the stream did not start with AUTH_REPLY");
        }
        connect_ms.push(started.elapsed().as_secs_f64() * 1e3);
        accepted = stream.early_data_accepted().await;
        stream.connection().close(0u32.into(), b"done");
    }
    endpoint.wait_idle().await;
    report
        .figure("h3_connect_new_ms", connect_ms[0])
        .figure("h3_connect_resumed_ms", connect_ms[1])
        .figure("h3_0rtt_accepted", u64::from(accepted));

    // 2. The switch, over raw QUIC.
    let raw = listener(server, "raw_quic")?;
    let mut client = QuicRawConnection::connect(raw, LOCAL, &ca).await?;
    let auth = pb::Auth {
        token: token(&server.data_dir(), "switch-raw")?,
        device_id: "phone".into(),
        platform: "bench".into(),
        rooms: Vec::new(),
    };
    client.send(Op::Auth, 1, &auth).await?;
    match tokio::time::timeout(STALL, client.next()).await {
        Ok(Ok(Some(f))) if f.op_kind() == Some(Op::AuthReply) => {}
        other => bail!("raw QUIC: no AUTH_REPLY ({other:?})"),
    }
    let stable = client.connection().stable_id();
    let pushes = ((duration.as_secs_f64() / PACE.as_secs_f64()) as usize).max(3);
    let admin = listener(server, "admin")?;
    let key = api_key(&server.data_dir())?;
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PACE);
        for i in 0..pushes {
            tick.tick().await;
            let body = serde_json::json!({"users": ["switch-raw"], "content": i.to_string()});
            roam_client::admin::request(
                admin,
                roam_client::admin::Method::POST,
                "/api/v1/push/users",
                &key,
                Some(Bytes::from(body.to_string())),
            )
            .await?;
        }
        anyhow::Ok(())
    });
    let moves = [(pushes / 3, 2u8), (2 * pushes / 3, 3u8)];
    let mut got = BTreeSet::new();
    let mut arrivals: Vec<(usize, Instant)> = Vec::new();
    while got.len() < pushes {
        let frame = match tokio::time::timeout(STALL, client.next()).await {
            Ok(Ok(Some(f))) => f,
            _ => break,
        };
        if frame.op_kind() != Some(Op::Push) {
            continue;
        }
        let push: pb::Push = frame.decode_body()?;
        let Some(pb::push::Kind::Ephemeral(e)) = push.kind else {
            continue;
        };
        let n: usize = std::str::from_utf8(&e.content)?.parse()?;
        got.insert(n);
        arrivals.push((n, Instant::now()));
        if let Some((_, host)) = moves.iter().find(|(at, _)| *at == n) {
            client.rebind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, *host)))?;
        }
    }
    pusher.await??;
    // The longest gap from a move to the next push received.
    let interruption = moves
        .iter()
        .filter_map(|(at, _)| {
            let i = arrivals.iter().position(|(n, _)| n == at)?;
            let next = arrivals.get(i + 1)?;
            Some((next.1 - arrivals[i].1).as_secs_f64() * 1e3)
        })
        .fold(0.0, f64::max);
    report
        .figure("quic_interruption_ms", interruption)
        .figure("quic_lost", (pushes - got.len()) as u64)
        .figure("quic_pushes", pushes as u64)
        .figure(
            "quic_same_connection",
            u64::from(client.connection().stable_id() == stable),
        );
    client.close().await;

    // 3. The switch over a TLS WebSocket: reconnect and SYNC.
    websocket_switch(server, pushes, &mut report).await?;
    Ok(report)
}

/// What the WebSocket client has obtained of the flow.
#[derive(Default)]
struct Flow {
    got: BTreeSet<usize>,
    arrivals: Vec<(usize, Instant)>,
    /// The highest inbox seq held: where SYNC resumes.
    last_seq: u64,
}

impl Flow {
    /// Takes in a stored message of the flow; its number if it is new.
    fn take(&mut self, m: &pb::Message) -> Result<Option<usize>> {
        self.last_seq = self.last_seq.max(m.seq);
        let n: usize = std::str::from_utf8(&m.content)?.parse()?;
        if !self.got.insert(n) {
            return Ok(None);
        }
        self.arrivals.push((n, Instant::now()));
        Ok(Some(n))
    }

    /// A frame from the server: a pushed stored message is taken in.
    fn frame(&mut self, frame: &roam_proto::Frame) -> Result<Option<usize>> {
        if frame.op_kind() != Some(Op::Push) {
            return Ok(None);
        }
        match frame.decode_body::<pb::Push>()?.kind {
            Some(pb::push::Kind::Message(m)) => self.take(&m),
            _ => Ok(None),
        }
    }
}

/// A TLS WebSocket from `source`, authenticated as `switch-ws`.
async fn ws_connect(
    server: &ChildServer,
    source: u8,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    token: &str,
) -> Result<WsConnection> {
    let addr = listener(server, "client_tcp")?;
    let tcp = roam_client::tcp_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)), addr).await?;
    let mut ws = WsConnection::connect_over(tcp, tls.clone()).await?;
    let auth = pb::Auth {
        token: token.to_owned(),
        device_id: "phone".into(),
        platform: "bench".into(),
        rooms: Vec::new(),
    };
    ws.send(Op::Auth, 1, &auth).await?;
    match tokio::time::timeout(STALL, ws.next()).await {
        Ok(Ok(Some(f))) if f.op_kind() == Some(Op::AuthReply) => Ok(ws),
        other => bail!("WebSocket: no AUTH_REPLY ({other:?})"),
    }
}

/// SYNC of the inbox after what `flow` holds, page by page; pushes that come meanwhile are
/// taken in too.
async fn sync(ws: &mut WsConnection, flow: &mut Flow, seq: &mut u32) -> Result<()> {
    loop {
        *seq += 1;
        let request = pb::Sync {
            after: flow.last_seq,
            ..Default::default()
        };
        ws.send(Op::Sync, *seq, &request).await?;
        let reply = loop {
            let frame = match tokio::time::timeout(STALL, ws.next()).await {
                Ok(Ok(Some(f))) => f,
                other => bail!("WebSocket: no SYNC_REPLY ({other:?})"),
            };
            if frame.op_kind() == Some(Op::SyncReply) && frame.seq == *seq {
                break frame.decode_body::<pb::SyncReply>()?;
            }
            flow.frame(&frame)?;
        };
        for m in &reply.messages {
            flow.take(m)?;
        }
        if !reply.has_more {
            return Ok(());
        }
    }
}

async fn websocket_switch(server: &ChildServer, pushes: usize, report: &mut Report) -> Result<()> {
    let tls = roam_tls::client_config(roam_tls::roots_from_pem(&server.dev_cert())?, ALPN_WS);
    let ws_token = token(&server.data_dir(), "switch-ws")?;
    let mut ws = ws_connect(server, 1, &tls, &ws_token).await?;
    let admin = listener(server, "admin")?;
    let key = api_key(&server.data_dir())?;
    // How many messages are stored: the client stays offline until some were stored while
    // it was away, so that only SYNC can bring them.
    let (stored_tx, mut stored) = tokio::sync::watch::channel(0usize);
    let sender = tokio::spawn(async move {
        let mut api = roam_client::admin::AdminConnection::connect(admin).await?;
        let mut tick = tokio::time::interval(PACE);
        for i in 0..pushes {
            tick.tick().await;
            let body = serde_json::json!({
                "from": "switch-peer",
                "to": "switch-ws",
                "client_msg_id": format!("switch-{i}"),
                "content": i.to_string(),
            });
            let answer = api
                .request(
                    roam_client::admin::Method::POST,
                    "/api/v1/messages",
                    &key,
                    Some(Bytes::from(body.to_string())),
                )
                .await?;
            if answer.status != 200 {
                bail!("POST /api/v1/messages: {}", answer.status);
            }
            stored_tx.send_replace(i + 1);
        }
        anyhow::Ok(())
    });
    let moves = [(pushes / 3, 2u8), (2 * pushes / 3, 3u8)];
    let mut flow = Flow::default();
    let mut reconnects = 0u64;
    let mut back = Vec::new();
    while flow.got.len() < pushes {
        let frame = match tokio::time::timeout(STALL, ws.next()).await {
            Ok(Ok(Some(f))) => f,
            _ => break,
        };
        let Some(n) = flow.frame(&frame)? else {
            continue;
        };
        if let Some((_, host)) = moves.iter().find(|(at, _)| *at == n) {
            // The network is gone: no close handshake, the socket is just dropped.
            drop(ws);
            let offline_until = (n + 1 + OFFLINE).min(pushes);
            stored
                .wait_for(|s| *s >= offline_until)
                .await
                .context("the sender stopped")?;
            back.push(Instant::now());
            ws = ws_connect(server, *host, &tls, &ws_token).await?;
            reconnects += 1;
            // AUTH was seq 1 on the new connection.
            let mut seq = 1;
            sync(&mut ws, &mut flow, &mut seq).await?;
        }
    }
    sender.await??;
    // From the moment the network is back to the first message obtained (SYNC or push).
    let interruption = back
        .iter()
        .filter_map(|at| {
            let next = flow.arrivals.iter().find(|(_, t)| t >= at)?;
            Some((next.1 - *at).as_secs_f64() * 1e3)
        })
        .fold(0.0, f64::max);
    report
        .figure("tcp_interruption_ms", interruption)
        .figure("tcp_lost_after_sync", (pushes - flow.got.len()) as u64)
        .figure("tcp_reconnects", reconnects);
    let _ = ws.close().await;
    Ok(())
}
