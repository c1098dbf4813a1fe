//! The SDK's client (issue 13) against a real `roam serve`: sending and receiving over the raw
//! and WebSocket transports, and surviving a server crash and restart with no message lost
//! or shown twice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::Duration;

use roam_bench::child::ChildServer;
use roam_client::client::{Client, ClientConfig, Events, Trust};
use roam_client::schedule::Backoff;
use roam_client::session::{Event, SessionConfig};
use roam_tests::token;

/// No per-user send rate: the test sends bursts.
const UNLIMITED: &str = "[messaging]\nsend_rate = 0\n";

fn edges(server: &ChildServer) -> Vec<String> {
    vec![
        format!("raw://{}", server.addr("raw").unwrap()),
        format!("wss://{}", server.addr("client_tcp").unwrap()),
    ]
}

fn client(server: &ChildServer, user: &str, edges: Vec<String>) -> (Client, Events) {
    let mut session = SessionConfig::new(token(server, user), format!("{user}-sdk"), edges);
    session.backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let config = ClientConfig {
        session,
        trust: Trust::CaFile(server.dev_cert()),
    };
    Client::connect(config).unwrap()
}

async fn next_text(events: &mut Events) -> String {
    let m = tokio::time::timeout(Duration::from_secs(20), events.next_message())
        .await
        .expect("no message within 20 s")
        .expect("the client stopped");
    String::from_utf8(m.content.to_vec()).unwrap()
}

async fn connected(events: &mut Events) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("not connected within 20 s")
            .expect("the client stopped");
        if matches!(e, Event::Connected(_)) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_a_server_restart_once_each_in_order() {
    let mut server = roam_tests::start(UNLIMITED);
    // alice on the raw port, bob over WebSocket.
    let (alice, mut alice_events) = client(&server, "alice", edges(&server));
    let ws_only = vec![edges(&server)[1].clone()];
    let (bob, mut bob_events) = client(&server, "bob", ws_only);
    connected(&mut alice_events).await;
    connected(&mut bob_events).await;

    let mut expected = Vec::new();
    for i in 0..5 {
        let ack = bob.send("alice", format!("before {i}")).await.unwrap();
        assert!(ack.id > 0 && ack.seq > 0, "{ack:?}");
        expected.push(format!("before {i}"));
    }
    for want in &expected[..3] {
        assert_eq!(&next_text(&mut alice_events).await, want);
    }

    // A crash: alice has not seen the last two pushes yet, or has; either way each once.
    let server = tokio::task::spawn_blocking(move || {
        server.kill_and_restart().unwrap();
        server
    })
    .await
    .unwrap();
    // bob finds the new server first and writes while alice is still away: she must resume
    // by SYNC from her cursor when she finds it.
    bob.set_edges(vec![edges(&server)[1].clone()]).unwrap();
    for i in 0..5 {
        let ack = bob.send("alice", format!("after {i}")).await.unwrap();
        assert!(ack.seq > 0, "{ack:?}");
        expected.push(format!("after {i}"));
    }
    expected.push("last".into());
    bob.send("alice", "last").await.unwrap();
    alice.set_edges(edges(&server)).unwrap();

    let mut got: Vec<String> = expected[..3].to_vec();
    while got.last().map(String::as_str) != Some("last") {
        got.push(next_text(&mut alice_events).await);
    }
    assert_eq!(got, expected);
    alice.close();
    bob.close();
}

/// The README's three-command tour, as written: the server is a private one (line 1 runs as
/// `ChildServer`, on ephemeral ports), `cargo run -q --release --` is this build's binary,
/// and `--server <its raw port>` follows `tail`/`send` (the suite never binds fixed ports).
/// The commands run in the server's directory, as a user's would beside `./data`.
#[test]
fn the_readme_tour_works_as_written() {
    use std::io::BufRead;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("### A three-command tour")
        .nth(1)
        .expect("the README has the tour");
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(lines.len(), 3, "{block}");
    assert_eq!(lines[0], "cargo run --release");

    let server = roam_tests::start("");
    let bin = roam_tests::roam_bin();
    let raw = format!("raw://{}", server.addr("raw").unwrap());
    let as_run = |line: &str| {
        line.replace("cargo run -q --release --", &bin.display().to_string())
            .replacen(" tail ", &format!(" tail --server {raw} "), 1)
            .replacen(" send ", &format!(" send --server {raw} "), 1)
    };
    let dir = server.data_dir().parent().unwrap().to_owned();
    let mut tail = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec {}", as_run(lines[1])))
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let send = std::process::Command::new("sh")
        .arg("-c")
        .arg(as_run(lines[2]))
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&send.stdout);
    assert!(
        send.status.success() && out.starts_with("id=") && out.contains(" seq=1"),
        "send: {out} {}",
        String::from_utf8_lossy(&send.stderr)
    );
    let line = rx.recv_timeout(Duration::from_secs(20));
    tail.kill().unwrap();
    let _ = tail.wait();
    assert_eq!(line.unwrap().unwrap(), "1 bob hello alice");
}

#[tokio::test]
async fn a_refused_token_is_one_clear_error() {
    let server = roam_tests::start("");
    let target = roam_client::cli::Target {
        server: format!("raw://{}", server.addr("raw").unwrap()),
        token: "not-a-token".into(),
        trust: Trust::CaFile(server.dev_cert()),
    };
    let e = roam_client::cli::send(&target, "bob", "hi", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused the token"), "{e}");
}

async fn connected_count_until(events: &mut Events, want: &[String]) -> (Vec<String>, usize) {
    let mut got = Vec::new();
    let mut connects = 0;
    while got.len() < want.len() {
        let e = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| panic!("got {got:?} of {want:?} within 20 s"))
            .expect("the client stopped");
        match e {
            Event::Connected(_) => connects += 1,
            Event::Message(m) => got.push(String::from_utf8(m.content.to_vec()).unwrap()),
            _ => {}
        }
    }
    (got, connects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_change_migrates_quic_and_reconnects_tcp_losing_nothing() {
    let server = roam_tests::start(UNLIMITED);
    let quic = vec![format!("quic://{}", server.addr("raw_quic").unwrap())];
    let tcp = vec![format!("raw://{}", server.addr("raw").unwrap())];
    let (alice, mut alice_events) = client(&server, "alice", quic);
    let (bob, mut bob_events) = client(&server, "bob", tcp);
    connected(&mut alice_events).await;
    connected(&mut bob_events).await;
    let local = "127.0.0.1".parse().unwrap();

    let mut to_alice = Vec::new();
    let mut to_bob = Vec::new();
    for i in 0..3 {
        bob.send("alice", format!("b{i}")).await.unwrap();
        alice.send("bob", format!("a{i}")).await.unwrap();
        to_alice.push(format!("b{i}"));
        to_bob.push(format!("a{i}"));
    }
    // Both move to another network mid-flow: alice's QUIC connection to a new UDP socket,
    // bob's TCP connection is replaced.
    alice.network_changed(local).unwrap();
    bob.network_changed(local).unwrap();
    for i in 3..6 {
        bob.send("alice", format!("b{i}")).await.unwrap();
        alice.send("bob", format!("a{i}")).await.unwrap();
        to_alice.push(format!("b{i}"));
        to_bob.push(format!("a{i}"));
    }
    let (got, alice_connects) = connected_count_until(&mut alice_events, &to_alice).await;
    assert_eq!(got, to_alice);
    assert_eq!(alice_connects, 0, "QUIC migrated: no new connection");
    let (got, bob_connects) = connected_count_until(&mut bob_events, &to_bob).await;
    assert_eq!(got, to_bob);
    assert_eq!(bob_connects, 1, "TCP reconnected once");
    alice.close();
    bob.close();
}

#[tokio::test]
async fn with_udp_blocked_the_client_falls_back_to_tcp() {
    let server = roam_tests::start(UNLIMITED);
    // A UDP port that swallows every datagram, as a network that blocks UDP does.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let edges = vec![
        format!("quic://{}", blackhole.local_addr().unwrap()),
        format!("raw://{}", server.addr("raw").unwrap()),
    ];
    let (alice, mut alice_events) = client(&server, "alice", edges);
    let (bob, mut bob_events) = client(
        &server,
        "bob",
        vec![format!("raw://{}", server.addr("raw").unwrap())],
    );
    connected(&mut bob_events).await;
    bob.send("alice", "over tcp").await.unwrap();
    assert_eq!(next_text(&mut alice_events).await, "over tcp");
    alice.close();
    bob.close();
}
