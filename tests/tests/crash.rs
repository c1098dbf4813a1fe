//! Crash test of stored messaging: the all-in-one `roam serve` is SIGKILLed at random moments
//! while 1:1 and group messages are being sent, then started again on the same data
//! directory. After each restart, every message whose SEND_ACK a client received is in the
//! timelines exactly once (the recipient's inbox, the conversation's history) and reaches
//! its recipients on SYNC; messages sent but not acknowledged are resent with the same
//! `client_msg_id`, which stores them at most once. Senders: alice → bob over the raw port,
//! fred → a write-fan-out and a read-fan-out group, carol → bob through
//! `POST /api/v1/messages` (a 200 is its acknowledgement).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roam_bench::child::ChildServer;
use roam_client::raw::RawConnection;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, Op};
use roam_tests::{admin, token};
use serde_json::json;
use tokio::sync::mpsc;

/// Kill points: one per round.
const ROUNDS: usize = 22;
/// SENDs a sender keeps unacknowledged.
const WINDOW: usize = 4;
/// The whole test's bound.
const BUDGET: Duration = Duration::from_secs(50);

/// Write fan-out for `small` (2 members), read fan-out for `big` (3 members).
const CONFIG: &str = "[messaging]\nsend_rate = 0\nfanout_threshold = 2\n[edge]\nrate_burst = 100000\nrate_per_sec = 100000\n";

/// A xorshift generator: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn next(c: &mut RawConnection) -> Option<Frame> {
    match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
        Ok(Ok(f)) => f,
        Ok(Err(_)) => None,
        Err(_) => panic!("no frame within 10 s"),
    }
}

async fn login(server: &ChildServer, user: &str) -> RawConnection {
    let mut c = RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap();
    let auth = pb::Auth {
        token: token(server, user),
        device_id: format!("{user}-phone"),
        platform: "test".into(),
        rooms: vec![],
    };
    c.send(Op::Auth, 1, &auth).await.unwrap();
    let f = next(&mut c).await.expect("AUTH_REPLY");
    assert_eq!(f.op_kind(), Some(Op::AuthReply), "{user}: {f:?}");
    c
}

/// One sender's messages across rounds.
#[derive(Debug, Default)]
struct Sender {
    /// client_msg_id → (recipient, id from its SEND_ACK).
    acked: BTreeMap<String, (String, u64)>,
    /// Sent but not acknowledged when the server died: resent next round.
    pending: VecDeque<(String, String)>,
    /// The next new message's number.
    next: u64,
}

/// Sends to `targets` in turn (resending `pending` first), `WINDOW` at a time, until the
/// connection breaks; tells `acks` of each SEND_ACK.
async fn send_until_killed(
    mut c: RawConnection,
    name: &'static str,
    targets: &'static [&'static str],
    mut s: Sender,
    acks: mpsc::UnboundedSender<()>,
) -> Sender {
    // seq → (client_msg_id, to)
    let mut in_flight: HashMap<u32, (String, String)> = HashMap::new();
    let mut seq = 1u32;
    'conn: loop {
        while in_flight.len() < WINDOW {
            let (cmid, to) = s.pending.pop_front().unwrap_or_else(|| {
                let n = s.next;
                s.next += 1;
                let to = targets[(n % targets.len() as u64) as usize].to_owned();
                (format!("{name}-{n}"), to)
            });
            seq += 1;
            let send = pb::Send {
                to: to.clone(),
                client_msg_id: cmid.clone(),
                content: cmid.clone().into_bytes().into(),
                content_type: String::new(),
            };
            let sent = c.send(Op::Send, seq, &send).await;
            in_flight.insert(seq, (cmid, to));
            if sent.is_err() {
                break 'conn;
            }
        }
        let Some(f) = next(&mut c).await else {
            break;
        };
        match f.op_kind() {
            Some(Op::SendAck) => {
                let ack: pb::SendAck = f.decode_body().unwrap();
                let (cmid, to) = in_flight
                    .remove(&f.seq)
                    .expect("an ack for a SEND in flight");
                assert_eq!(ack.client_msg_id, cmid);
                s.acked.insert(cmid, (to, ack.id));
                let _ = acks.send(());
            }
            // The server refused it (e.g. while starting): send it again.
            Some(Op::Error) => {
                if let Some(m) = in_flight.remove(&f.seq) {
                    s.pending.push_back(m);
                }
            }
            Some(Op::Disconnect) => break,
            _ => {}
        }
    }
    s.pending.extend(in_flight.into_values());
    s
}

/// Sends carol's messages to bob through `POST /api/v1/messages`, one at a time, until a
/// request fails; a 200 is the acknowledgement.
async fn api_until_killed(
    admin: std::net::SocketAddr,
    key: String,
    mut s: Sender,
    acks: mpsc::UnboundedSender<()>,
) -> Sender {
    loop {
        let (cmid, to) = s.pending.pop_front().unwrap_or_else(|| {
            let n = s.next;
            s.next += 1;
            (format!("c-{n}"), "bob".to_owned())
        });
        let body = json!({"from": "carol", "to": to, "client_msg_id": cmid, "content": cmid});
        let r = roam_client::admin::request(
            admin,
            roam_client::admin::Method::POST,
            "/api/v1/messages",
            &key,
            Some(body.to_string().into()),
        )
        .await;
        match r {
            Ok(r) if r.status == 200 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                s.acked.insert(cmid, (to, v["id"].as_u64().unwrap()));
                let _ = acks.send(());
            }
            Ok(r) if r.status >= 500 => s.pending.push_back((cmid, to)),
            Ok(r) => panic!("POST /api/v1/messages: {} {:?}", r.status, r.body),
            Err(_) => {
                s.pending.push_back((cmid, to));
                return s;
            }
        }
    }
}

/// Every message of `user`'s inbox (`conversation` empty) or of a conversation's history,
/// paging with SYNC.
async fn sync_all(c: &mut RawConnection, conversation: &str) -> Vec<pb::Message> {
    let mut all = Vec::new();
    let mut after = 0;
    for seq in 1000u32.. {
        let req = pb::Sync {
            after,
            limit: 500,
            conversation: conversation.into(),
            before: 0,
        };
        c.send(Op::Sync, seq, &req).await.unwrap();
        let reply = loop {
            let f = next(c).await.expect("a SYNC_REPLY");
            match f.op_kind() {
                Some(Op::SyncReply) if f.seq == seq => {
                    break f.decode_body::<pb::SyncReply>().unwrap();
                }
                Some(Op::Error) => panic!("SYNC {conversation:?}: {f:?}"),
                _ => {}
            }
        };
        all.extend(reply.messages);
        if !reply.has_more {
            break;
        }
        after = reply.next_after;
    }
    all
}

/// Every acknowledged message to `to` is in `timeline` exactly once; no message is there twice.
fn exactly_once(
    what: &str,
    timeline: &[pb::Message],
    acked: &BTreeMap<String, (String, u64)>,
    to: &str,
) -> usize {
    let mut count: HashMap<u64, usize> = HashMap::new();
    // The content is the client_msg_id: a resend stored twice shows as the same content.
    let mut copies: HashMap<&[u8], usize> = HashMap::new();
    for m in timeline {
        *count.entry(m.id).or_default() += 1;
        *copies.entry(&m.content[..]).or_default() += 1;
    }
    if let Some((id, n)) = count.iter().find(|(_, n)| **n > 1) {
        panic!("{what}: message {id} is there {n} times");
    }
    if let Some((content, n)) = copies.iter().find(|(_, n)| **n > 1) {
        panic!(
            "{what}: {} was stored {n} times",
            String::from_utf8_lossy(content)
        );
    }
    let mut checked = 0;
    for (cmid, (target, id)) in acked {
        if target == to {
            assert_eq!(
                count.get(id),
                Some(&1),
                "{what}: acknowledged message {cmid} (id {id}) missing"
            );
            checked += 1;
        }
    }
    checked
}

/// Checks every timeline against what was acknowledged; returns how many acks it checked.
async fn verify(server: &ChildServer, a: &Sender, g: &Sender, c: &Sender) -> usize {
    let mut checked = 0;
    // 1:1: bob's inbox (gap-free seqs) and the pair's history.
    let mut bob = login(server, "bob").await;
    let inbox = sync_all(&mut bob, "").await;
    let seqs: Vec<u64> = inbox.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = (1..=inbox.len() as u64).collect();
    assert_eq!(seqs, want, "bob's inbox seqs are gap-free from 1");
    checked += exactly_once("bob's inbox", &inbox, &a.acked, "bob");
    checked += exactly_once("bob's inbox", &inbox, &c.acked, "bob");
    let history = sync_all(&mut bob, "alice").await;
    exactly_once("alice:bob history", &history, &a.acked, "bob");
    let history = sync_all(&mut bob, "carol").await;
    exactly_once("carol:bob history", &history, &c.acked, "bob");
    // Write fan-out: gina's inbox holds `small`'s messages.
    let mut gina = login(server, "gina").await;
    let inbox = sync_all(&mut gina, "").await;
    let small: Vec<pb::Message> = inbox
        .into_iter()
        .filter(|m| m.to == "group:small")
        .collect();
    checked += exactly_once("gina's inbox", &small, &g.acked, "group:small");
    // Read fan-out: `big`'s history, as its member hugo pulls it.
    let mut hugo = login(server, "hugo").await;
    let big = sync_all(&mut hugo, "group:big").await;
    checked += exactly_once("group:big history", &big, &g.acked, "group:big");
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once() {
    let started = Instant::now();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut server = roam_tests::start(CONFIG);
    for (id, members) in [
        ("small", json!(["fred", "gina"])),
        ("big", json!(["fred", "gina", "hugo"])),
    ] {
        let body = json!({"id": id, "members": members}).to_string();
        let r = admin(&server, "POST", "/api/v1/groups", Some(&body), None).await;
        assert!((200..300).contains(&r.status), "{}", r.body);
    }
    let (mut alice_s, mut fred_s, mut carol_s) =
        (Sender::default(), Sender::default(), Sender::default());
    let mut kills = 0;
    for round in 0..ROUNDS {
        assert!(
            started.elapsed() < BUDGET,
            "round {round} of {ROUNDS} after {:?}",
            started.elapsed()
        );
        let (tx, mut acks) = mpsc::unbounded_channel();
        let alice = login(&server, "alice").await;
        let fred = login(&server, "fred").await;
        let a = tokio::spawn(send_until_killed(alice, "a", &["bob"], alice_s, tx.clone()));
        let f = tokio::spawn(send_until_killed(
            fred,
            "f",
            &["group:small", "group:big"],
            fred_s,
            tx.clone(),
        ));
        let key = roam_tests::api_key(&server);
        let c = tokio::spawn(api_until_killed(
            server.addr("admin").unwrap(),
            key,
            carol_s,
            tx,
        ));
        // Under traffic: after the first ack of the round, at a random moment within 40 ms.
        tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("an ack within 10 s")
            .expect("the senders are running");
        tokio::time::sleep(Duration::from_micros(rng.below(40_000))).await;
        server = tokio::task::spawn_blocking(move || {
            let mut s = server;
            s.kill_and_restart().map(|()| s)
        })
        .await
        .unwrap()
        .unwrap();
        kills += 1;
        alice_s = a.await.unwrap();
        fred_s = f.await.unwrap();
        carol_s = c.await.unwrap();
        verify(&server, &alice_s, &fred_s, &carol_s).await;
    }
    // Last: what was in flight at the last kill, sent again, is stored once too.
    for (name, s) in [("alice", &mut alice_s), ("fred", &mut fred_s)] {
        let mut c = login(&server, name).await;
        for (i, (cmid, to)) in std::mem::take(&mut s.pending).into_iter().enumerate() {
            let seq = 10 + i as u32;
            let send = pb::Send {
                to: to.clone(),
                client_msg_id: cmid.clone(),
                content: cmid.clone().into_bytes().into(),
                content_type: String::new(),
            };
            c.send(Op::Send, seq, &send).await.unwrap();
            loop {
                let f = next(&mut c).await.expect("a SEND_ACK");
                if f.op_kind() == Some(Op::SendAck) && f.seq == seq {
                    let ack: pb::SendAck = f.decode_body().unwrap();
                    s.acked.insert(cmid.clone(), (to.clone(), ack.id));
                    break;
                }
                assert_ne!(
                    f.op_kind(),
                    Some(Op::Error),
                    "{name} resending {cmid}: {f:?}"
                );
            }
        }
    }
    // carol's pending ones, through the API.
    let pending = std::mem::take(&mut carol_s.pending);
    for (cmid, to) in pending {
        let body = json!({"from": "carol", "to": to, "client_msg_id": cmid, "content": cmid});
        let r = admin(
            &server,
            "POST",
            "/api/v1/messages",
            Some(&body.to_string()),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        carol_s
            .acked
            .insert(cmid, (to, r.json()["id"].as_u64().unwrap()));
    }
    let checked = verify(&server, &alice_s, &fred_s, &carol_s).await;
    assert!(kills >= 20, "{kills} kill points");
    let sent = alice_s.acked.len() + fred_s.acked.len() + carol_s.acked.len();
    println!(
        "{kills} kills, {sent} messages acknowledged, {checked} checked, {:?}",
        started.elapsed()
    );
    assert!(checked >= sent, "every acknowledged message was checked");
    for (who, s) in [("alice", &alice_s), ("fred", &fred_s), ("carol", &carol_s)] {
        assert!(!s.acked.is_empty(), "{who} had messages acknowledged");
    }
}
