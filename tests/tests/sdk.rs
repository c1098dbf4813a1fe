//! The SDK's client (issue 13) against a real `roam serve`: sending and receiving over the raw
//! and WebSocket transports, and surviving a server crash and restart with no message lost
//! or shown twice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use roam_bench::child::ChildServer;
use roam_client::client::{Client, ClientConfig, Events, Trust};
use roam_client::schedule::Backoff;
use roam_client::session::{Event, LostReason, SessionConfig};
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
    let config = ClientConfig::new(session, Trust::CaFile(server.dev_cert()));
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

/// bob connects over `edges` and says `text`; alice (whose events these are) hears it.
async fn bob_says_to_alice(
    server: &ChildServer,
    edges: Vec<String>,
    text: &str,
    alice: &mut Events,
) {
    let (bob, mut bob_events) = client(server, "bob", edges);
    connected(&mut bob_events).await;
    bob.send("alice", text.to_owned()).await.unwrap();
    assert_eq!(next_text(alice).await, text);
    bob.close();
}

/// alice and bob send each other messages `b{i}` and `a{i}` for each `i` (each send
/// acknowledged), noted in what each should receive.
async fn exchange(
    alice: &Client,
    bob: &Client,
    range: std::ops::Range<u32>,
    to_alice: &mut Vec<String>,
    to_bob: &mut Vec<String>,
) {
    for i in range {
        let ack = bob.send("alice", format!("b{i}")).await.unwrap();
        assert!(ack.id > 0 && ack.seq > 0, "{ack:?}");
        alice.send("bob", format!("a{i}")).await.unwrap();
        to_alice.push(format!("b{i}"));
        to_bob.push(format!("a{i}"));
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
    exchange(&alice, &bob, 0..3, &mut to_alice, &mut to_bob).await;
    // Both move to another network mid-flow: alice's QUIC connection to a new UDP socket,
    // bob's TCP connection is replaced.
    alice.network_changed(local).unwrap();
    bob.network_changed(local).unwrap();
    exchange(&alice, &bob, 3..6, &mut to_alice, &mut to_bob).await;
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
    bob_says_to_alice(
        &server,
        vec![format!("raw://{}", server.addr("raw").unwrap())],
        "over tcp",
        &mut alice_events,
    )
    .await;
    alice.close();
}

/// The SDK verifies the certificate for the host it dials (not always `localhost`): a server
/// whose certificate names only 127.0.0.1 is accepted at `127.0.0.1` and refused at
/// `localhost`, over TCP and over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_verified_for_the_dialed_host() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let server = roam_tests::start(&format!(
        "{UNLIMITED}[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let token = token(&server, "bob");
    let target = |scheme: &str, host: &str, listener: &str| roam_client::cli::Target {
        server: format!(
            "{scheme}://{host}:{}",
            server.addr(listener).unwrap().port()
        ),
        token: token.clone(),
        trust: Trust::CaFile(cert.clone()),
    };
    for (scheme, listener) in [("raw", "raw"), ("quic", "raw_quic"), ("wss", "client_tcp")] {
        let right = target(scheme, "127.0.0.1", listener);
        let ack = roam_client::cli::send(&right, "alice", "hi", Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{scheme} at 127.0.0.1: {e}"));
        assert!(ack.seq > 0, "{ack:?}");
        // The certificate does not name `localhost`: no connection, so no acknowledgement.
        let wrong = target(scheme, "localhost", listener);
        let e = roam_client::cli::send(&wrong, "alice", "hi", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(e, roam_client::cli::CliError::Timeout(..)),
            "{scheme} at localhost: {e}"
        );
    }
}

/// The HTTP stream transports: alice over HTTP/3 (`h3://`, the client port's UDP twin), bob
/// over HTTP/2 (`h2://`, the client port), each `GET /v1/stream` down and `POST /v1/send`
/// up; alice's HTTP/3 connection migrates on a network change; a refused token ends the
/// client with one clear reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_and_http2_streams_chat_and_http3_migrates() {
    let server = roam_tests::start(UNLIMITED);
    let h3 = vec![format!("h3://{}", server.addr("client_quic").unwrap())];
    let h2 = vec![format!("h2://{}", server.addr("client_tcp").unwrap())];
    let (alice, mut alice_events) = client(&server, "alice", h3);
    let (bob, mut bob_events) = client(&server, "bob", h2.clone());
    connected(&mut alice_events).await;
    connected(&mut bob_events).await;
    alice.join_room("lobby").unwrap();

    let mut to_alice = Vec::new();
    let mut to_bob = Vec::new();
    exchange(&alice, &bob, 0..3, &mut to_alice, &mut to_bob).await;
    alice.network_changed("127.0.0.1".parse().unwrap()).unwrap();
    exchange(&alice, &bob, 3..6, &mut to_alice, &mut to_bob).await;
    let (got, alice_connects) = connected_count_until(&mut alice_events, &to_alice).await;
    assert_eq!(got, to_alice);
    assert_eq!(alice_connects, 0, "HTTP/3 migrated: no new connection");
    let (got, _) = connected_count_until(&mut bob_events, &to_bob).await;
    assert_eq!(got, to_bob);
    alice.close();
    bob.close();

    // A refused token over HTTP: the opening's 401 ends the client like AUTH's ERROR would.
    let mut session = SessionConfig::new("not-a-token", "eve-sdk", h2);
    session.backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let (_eve, mut eve_events) =
        Client::connect(ClientConfig::new(session, Trust::CaFile(server.dev_cert()))).unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), eve_events.next())
            .await
            .expect("no Closed within 20 s")
            .expect("the client stopped");
        if let Event::Closed(why) = e {
            assert!(why.contains("refused the token"), "{why}");
            break;
        }
    }
}

/// A stand-in for the app's backend: answers every request with `json` (the business API's
/// `GET /api/v1/edges` shape), one connection at a time, and counts the requests.
async fn backend(json: String) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                json.len()
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
    });
    (addr, asked)
}

/// The edge list comes from the app's backend (the `GET /api/v1/edges` shape, which the test's
/// backend copies from the real server's business API behind a dead edge) and is tried in
/// order: the dead edge first, then the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_list_comes_from_the_apps_backend_and_is_tried_in_order() {
    let server = roam_tests::start(UNLIMITED);
    let live = roam_tests::poll(&server, "/api/v1/edges", |v| {
        v["edges"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let live_edges = live["edges"].as_array().unwrap().clone();
    assert_eq!(live_edges.len(), 1, "{live}");
    // A dead edge listed first: it takes the connection and closes it at once.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let (tried_tx, mut tried) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = dead.accept().await {
            drop(tcp);
            let _ = tried_tx.send(());
        }
    });
    let mut edges = vec![serde_json::json!({
        "id": "dead-1",
        "addresses": {"raw": dead_addr.to_string()}
    })];
    edges.extend(live_edges);
    let (url, asked) = backend(serde_json::json!({ "edges": edges }).to_string()).await;

    let mut session = SessionConfig::new(token(&server, "alice"), "alice-sdk", Vec::new());
    session.backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let mut config = ClientConfig::new(session, Trust::CaFile(server.dev_cert()));
    config.edges_url = Some(format!("http://{url}/edges"));
    let (alice, mut alice_events) = Client::connect(config).unwrap();
    connected(&mut alice_events).await;
    assert!(asked.load(Ordering::SeqCst) >= 1, "the backend was asked");
    // Had the client not started with the list's first edge, it would never have tried it.
    tokio::time::timeout(Duration::from_secs(5), tried.recv())
        .await
        .expect("the list's first edge was tried first")
        .unwrap();

    bob_says_to_alice(
        &server,
        edges_of(&server),
        "via the edge list",
        &mut alice_events,
    )
    .await;
    alice.close();
}

fn edges_of(server: &ChildServer) -> Vec<String> {
    vec![format!("raw://{}", server.addr("raw").unwrap())]
}

/// An edge that authenticates anyone, then drains at once with `DISCONNECT` naming
/// `reconnect_to`: the client must go there (it has no other edge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_with_reconnect_to_is_followed() {
    use roam_proto::client::v1 as pb;
    use roam_proto::{FrameDecoder, Op, frame_of};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = roam_tests::start(UNLIMITED);
    let tls_dir = server.data_dir().join("tls");
    let cert = roam_tls::load_pem(&tls_dir.join("cert.pem"), &tls_dir.join("key.pem")).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        roam_tls::server_config(&cert, roam_tls::ALPN_RAW).unwrap(),
    );
    let draining = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let draining_addr = draining.local_addr().unwrap();
    let real = format!("raw://{}", server.addr("raw").unwrap());
    let reconnect_to = real.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = draining.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let decoder = FrameDecoder::new(1 << 20);
            let mut buf = bytes::BytesMut::new();
            let auth = loop {
                if let Ok(Some(f)) = decoder.decode(&mut buf) {
                    if f.op_kind() == Some(Op::Auth) {
                        break f;
                    }
                    continue;
                }
                if matches!(tls.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                    return;
                }
            };
            let reply = pb::AuthReply {
                user_id: "alice".into(),
                heartbeat_secs: 30,
                ..Default::default()
            };
            let drain = pb::Disconnect {
                reason: pb::disconnect::Reason::Drain as i32,
                message: "moving you".into(),
                reconnect: true,
                reconnect_after_ms: 0,
                reconnect_to: reconnect_to.clone(),
            };
            let mut out = frame_of(Op::AuthReply, auth.seq, &reply).unwrap().to_vec();
            out.extend_from_slice(&frame_of(Op::Disconnect, 0, &drain).unwrap());
            let _ = tls.write_all(&out).await;
            let _ = tls.shutdown().await;
        }
    });

    let (alice, mut alice_events) =
        client(&server, "alice", vec![format!("raw://{draining_addr}")]);
    connected(&mut alice_events).await; // the draining edge
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), alice_events.next())
            .await
            .expect("no DISCONNECT within 20 s")
            .expect("the client stopped");
        if let Event::ConnectionLost(LostReason::Disconnect { message, .. }) = e {
            assert_eq!(message, "moving you");
            break;
        }
    }
    connected(&mut alice_events).await; // reconnect_to: the real server
    bob_says_to_alice(&server, vec![real], "found you", &mut alice_events).await;
    alice.close();
}

/// A small event queue that the application does not read for a while: the client stops
/// reading its connection instead of queueing without bound, and once read, every message
/// is there, in order, once; the queue never holds more than its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_queue_holds_back_the_connection_and_loses_nothing() {
    let server = roam_tests::start(UNLIMITED);
    let mut session = SessionConfig::new(token(&server, "alice"), "alice-sdk", edges_of(&server));
    session.backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let mut config = ClientConfig::new(session, Trust::CaFile(server.dev_cert()));
    config.events_capacity = 4;
    let (alice, mut alice_events) = Client::connect(config).unwrap();
    connected(&mut alice_events).await;
    let (bob, mut bob_events) = client(&server, "bob", edges_of(&server));
    connected(&mut bob_events).await;
    let want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for text in &want {
        bob.send("alice", text.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        assert!(
            alice_events.len() <= 4,
            "{} events queued",
            alice_events.len()
        );
        got.push(next_text(&mut alice_events).await);
    }
    assert_eq!(got, want);
    alice.close();
    bob.close();
}
