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
    alice.set_edges(edges(&server)).unwrap();
    bob.set_edges(vec![edges(&server)[1].clone()]).unwrap();
    for i in 0..5 {
        let ack = bob.send("alice", format!("after {i}")).await.unwrap();
        assert!(ack.seq > 0, "{ack:?}");
        expected.push(format!("after {i}"));
    }
    expected.push("last".into());
    bob.send("alice", "last").await.unwrap();

    let mut got: Vec<String> = expected[..3].to_vec();
    while got.last().map(String::as_str) != Some("last") {
        got.push(next_text(&mut alice_events).await);
    }
    assert_eq!(got, expected);
    alice.close();
    bob.close();
}
