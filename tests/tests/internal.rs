//! The internal gRPC port (edge link, ID service) against real `roam serve` processes: every
//! caller needs the internal key, a linked edge id cannot be taken, and two edge processes
//! with default configs link side by side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::Duration;

use roam_bench::child::ChildServer;
use roam_client::raw::RawConnection;
use roam_edge::link::{CoreLink, EdgeIdentity, LinkError};
use roam_proto::Op;
use roam_proto::client::v1 as pb;
use roam_proto::idsvc::v1::SnowflakeRequest;
use roam_proto::idsvc::v1::id_service_client::IdServiceClient;
use roam_proto::internal::v1::{self as link, EdgeUp, edge_down, edge_up};
use roam_proto::internal_auth::{AttachKey, InternalKey};
use roam_tests::{admin, auth, internal_key, metric, next_frame, poll, push, raw_login, token};
use serde_json::json;

fn internal_uri(server: &ChildServer) -> String {
    format!(
        "http://{}",
        server.addr("internal").expect("internal address")
    )
}

/// Opens an edge link as `id` with `key` (and `region`, to tell links apart).
async fn link(
    server: &ChildServer,
    id: &str,
    region: &str,
    key: Option<InternalKey>,
) -> Result<CoreLink, LinkError> {
    let identity = EdgeIdentity {
        key,
        edge_id: id.into(),
        region: region.into(),
        weight: 1,
        ..EdgeIdentity::default()
    };
    CoreLink::connect(&internal_uri(server), identity).await
}

/// An ID service client sending `key` with every call.
async fn ids(
    server: &ChildServer,
    key: Option<InternalKey>,
) -> IdServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AttachKey>,
> {
    let channel = tonic::transport::Endpoint::from_shared(internal_uri(server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    IdServiceClient::with_interceptor(channel, AttachKey(key))
}

#[tokio::test]
async fn the_internal_port_refuses_callers_without_the_right_key() {
    let server = roam_tests::start("");
    let wrong = InternalKey::from_bytes(&[0x42; 32]);
    for key in [None, Some(wrong)] {
        let what = if key.is_some() {
            "a wrong key"
        } else {
            "no key"
        };
        match link(&server, "intruder", "x", key.clone()).await {
            Err(LinkError::Refused {
                code: tonic::Code::Unauthenticated,
                message,
            }) => assert!(message.contains("internal"), "{message}"),
            other => panic!("Register with {what}: {other:?}"),
        }
        let status = ids(&server, key)
            .await
            .snowflake(SnowflakeRequest { count: 1 })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{what}: {status:?}"
        );
    }
    assert_eq!(
        metric(&server, "roam_internal_unauthenticated_total").await,
        4.0
    );
    assert!(
        link(&server, "intruder", "x", None).await.is_err(),
        "no edge got in"
    );
    let edges = admin(&server, "GET", "/api/v1/edges", None, None)
        .await
        .json();
    assert!(
        edges["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != "intruder"),
        "{edges}"
    );

    // With the server's key both services answer.
    let key = internal_key(&server);
    let reply = ids(&server, Some(key.clone()))
        .await
        .snowflake(SnowflakeRequest { count: 1 })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().ids.len(), 1);
    drop(link(&server, "keyed", "x", Some(key)).await.unwrap());
    assert_eq!(server.stop().unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_second_link_with_a_linked_edge_id_is_refused_and_the_first_untouched() {
    let server = roam_tests::start("role = \"core\"\n");
    let key = internal_key(&server);
    let mut first = link(&server, "edge-a", "first", Some(key.clone()))
        .await
        .unwrap();
    match link(&server, "edge-a", "second", Some(key.clone())).await {
        Err(LinkError::Refused {
            code: tonic::Code::AlreadyExists,
            message,
        }) => assert!(
            message.contains("\"edge-a\"") && message.contains("edge.id"),
            "{message}"
        ),
        other => panic!("a second Register of edge-a: {other:?}"),
    }
    assert_eq!(
        metric(
            &server,
            "roam_core_edge_links_refused_total{kind=\"edge_id_taken\"}"
        )
        .await,
        1.0
    );

    // The first link still carries its edge: core answers it, and the node list is its.
    let edges = admin(&server, "GET", "/api/v1/edges", None, None)
        .await
        .json();
    let listed: Vec<_> = edges["edges"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{edges}");
    assert_eq!(
        (listed[0]["id"].clone(), listed[0]["region"].clone()),
        (json!("edge-a"), json!("first"))
    );
    let connect = link::Connect {
        conn_id: 1,
        token: token(&server, "alice"),
        device_id: "phone".into(),
        platform: "test".into(),
        transport: "raw".into(),
        rooms: vec![],
    };
    first
        .sender()
        .send(EdgeUp {
            msg: Some(edge_up::Msg::Connect(connect)),
        })
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), first.next()).await {
        Ok(Ok(Some(edge_down::Msg::ConnectResult(r)))) => assert!(r.ok, "{r:?}"),
        other => panic!("the first link no longer works: {other:?}"),
    }
    let r = push(
        &server,
        "users",
        json!({"users": ["alice"], "content": "still here"}),
    )
    .await;
    assert_eq!((r.status, r.json()["queued"].clone()), (202, json!(1)));
    match tokio::time::timeout(Duration::from_secs(5), first.next()).await {
        Ok(Ok(Some(edge_down::Msg::Deliver(_)))) => {}
        other => panic!("no delivery on the first link: {other:?}"),
    }
    drop(first);
    assert_eq!(server.stop().unwrap().code(), Some(0));
}

/// Pushes `content` to alice and bob and checks both receive it.
async fn push_both(core: &ChildServer, alice: &mut RawConnection, bob: &mut RawConnection, n: u32) {
    let content = format!("round {n}");
    let r = push(
        core,
        "users",
        json!({"users": ["alice", "bob"], "content": content}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["queued"].clone()),
        (202, json!(2)),
        "{n}"
    );
    for c in [alice, bob] {
        let f = next_frame(c).await;
        assert_eq!(f.op_kind(), Some(Op::Push), "{n}: {f:?}");
        let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
            panic!("{n}: {f:?}")
        };
        assert_eq!(e.content, content.as_bytes(), "{n}");
    }
}

/// An operator's split: `roam serve` (role all) and `roam serve --role edge` pointed at it,
/// both with the default `edge.id`. Both edges stay linked and their clients keep working;
/// a third process that names a live edge's id is refused at start with a clear error.
#[tokio::test]
async fn two_serve_processes_with_default_edge_ids_both_stay_linked() {
    let all = roam_tests::start("");
    let key_file = all.data_dir().join("internal-key");
    let edge_toml = format!(
        "[edge]\ncore = \"{}\"\n[internal]\nkey_file = {:?}\n",
        internal_uri(&all),
        key_file.display().to_string()
    );
    let edge = ChildServer::start_with(&roam_tests::roam_bin(), &edge_toml, &["--role", "edge"])
        .unwrap_or_else(|e| panic!("roam serve --role edge: {e}"));
    let edges = poll(&all, "/api/v1/edges", |v| {
        v["edges"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    let ids: Vec<String> = edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(ids[0], ids[1], "{edges}");

    let mut alice = raw_login(&all, &auth(&all, "alice", "alice-phone")).await.0;
    let mut bob = raw_login(&edge, &auth(&all, "bob", "bob-phone")).await.0;
    for n in 0..5 {
        push_both(&all, &mut alice, &mut bob, n).await;
    }

    // A third edge process that takes the all-in-one's edge id is refused; nobody else moves.
    let own_id = all
        .stdout()
        .lines()
        .find_map(|l| {
            l.strip_prefix("edge")?
                .trim_start()
                .split_once(" linked to core")
                .map(|(id, _)| id.to_owned())
        })
        .expect("the banner names the edge");
    assert!(ids.contains(&own_id), "{own_id} in {ids:?}");
    let thief_toml = format!(
        "[edge]\ncore = \"{}\"\nid = {own_id:?}\n[internal]\nkey_file = {:?}\n",
        internal_uri(&all),
        key_file.display().to_string()
    );
    match ChildServer::start_with(&roam_tests::roam_bin(), &thief_toml, &["--role", "edge"]) {
        // The child's error carries its stderr: the refusal, naming the id.
        Err(e) => {
            let stderr = format!("{e:#}");
            assert!(
                stderr.contains("before it was ready")
                    && stderr.contains("already linked")
                    && stderr.contains(&own_id),
                "{stderr}"
            );
        }
        Ok(_) => panic!("an edge with a live edge's id started"),
    }
    for n in 5..8 {
        push_both(&all, &mut alice, &mut bob, n).await;
    }
    let log = format!("{}\n{}", all.stderr_tail(), edge.stderr_tail());
    assert!(!log.contains("link to core lost"), "{log}");
    assert_eq!(edge.stop().unwrap().code(), Some(0));
    assert_eq!(all.stop().unwrap().code(), Some(0));
}

/// `internal.tls = true`: `roam serve` generates a development CA and certificate, and
/// `roam serve --role edge` with copies of them links over mutual TLS (its clients get
/// pushes); a caller with the right key but no client certificate — plain HTTP/2, or TLS
/// without a certificate — is refused.
#[tokio::test]
async fn with_internal_tls_both_processes_verify_each_other_and_a_caller_without_a_certificate_is_refused()
 {
    let all = roam_tests::start("[internal]\ntls = true\n");
    let pki = all.data_dir().join("internal-tls");
    let path = |name: &str| pki.join(name).display().to_string();
    let edge_toml = format!(
        "[edge]\ncore = \"{}\"\n[internal]\nkey_file = {:?}\ntls = true\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        internal_uri(&all),
        all.data_dir().join("internal-key").display().to_string(),
        path("ca.pem"),
        path("node.pem"),
        path("node-key.pem"),
    );
    let edge = ChildServer::start_with(&roam_tests::roam_bin(), &edge_toml, &["--role", "edge"])
        .unwrap_or_else(|e| panic!("roam serve --role edge: {e}"));
    poll(&all, "/api/v1/edges", |v| {
        v["edges"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    let mut alice = raw_login(&all, &auth(&all, "alice", "alice-phone")).await.0;
    let mut bob = raw_login(&edge, &auth(&all, "bob", "bob-phone")).await.0;
    push_both(&all, &mut alice, &mut bob, 0).await;

    // The right key over plain HTTP/2: no TLS, no call.
    let key = internal_key(&all);
    let plain = tonic::transport::Endpoint::from_shared(internal_uri(&all))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = IdServiceClient::with_interceptor(channel, AttachKey(Some(key)));
        let r = client.snowflake(SnowflakeRequest { count: 1 }).await;
        assert!(r.is_err(), "{r:?}");
    }
    // TLS trusting the CA, without a client certificate: refused in the handshake.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let roots = roam_tls::roots_from_pem(&pki.join("ca.pem")).unwrap();
    let tcp = tokio::net::TcpStream::connect(all.addr("internal").unwrap())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(roam_tls::client_config(roots, &[b"h2"]))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("answered");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        metric(
            &all,
            "roam_refused_connections_total{reason=\"internal_tls\"}"
        )
        .await
            >= 1.0
    );
}

/// `internal.tls = true` across the role split of issue 14: `roam serve --role core` draws IDs
/// from `roam serve --role idsvc` over mutual TLS (with copies of the ID service's
/// development CA, certificate and key); a core presenting a certificate of another CA, or
/// none (no `internal.tls`), gets no ID: the ID service refuses it in the handshake.
#[tokio::test]
async fn with_internal_tls_core_draws_ids_from_a_remote_id_service_that_refuses_a_foreign_certificate()
 {
    let ids = ChildServer::start_with(
        &roam_tests::roam_bin(),
        "[internal]\ntls = true\n",
        &["--role", "idsvc"],
    )
    .unwrap_or_else(|e| panic!("roam serve --role idsvc: {e}"));
    let pki = ids.data_dir().join("internal-tls");
    let path = |dir: &std::path::Path, name: &str| dir.join(name).display().to_string();
    let core_toml = |tls: &str| {
        format!(
            "[core]\nids = \"{}\"\n[internal]\nkey_file = {:?}\n{tls}",
            internal_uri(&ids),
            ids.data_dir().join("internal-key").display().to_string(),
        )
    };
    let start_core = |toml: String| {
        ChildServer::start_with(&roam_tests::roam_bin(), &toml, &["--role", "core"])
            .unwrap_or_else(|e| panic!("roam serve --role core: {e}"))
    };
    let core = start_core(core_toml(&format!(
        "tls = true\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        path(&pki, "ca.pem"),
        path(&pki, "node.pem"),
        path(&pki, "node-key.pem"),
    )));
    let new_tag = Some(r#"{"tag": "msg", "step": 100}"#);
    let r = admin(&core, "POST", "/api/v1/ids/tags", new_tag, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin(&core, "GET", "/api/v1/ids/msg?count=5", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<u64> = serde_json::from_value(r.json()["ids"].clone()).unwrap();
    assert_eq!(got.len(), 5, "{}", r.body);
    assert_eq!(
        metric(
            &ids,
            "roam_refused_connections_total{reason=\"internal_tls\"}"
        )
        .await,
        0.0,
        "the right certificate is not refused"
    );

    // Another deployment's certificate (its own development CA), trusting ours: refused.
    let other = tempfile::tempdir().unwrap();
    roam_tls::internal::dev_pki(other.path()).unwrap();
    let foreign = start_core(core_toml(&format!(
        "tls = true\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        path(&pki, "ca.pem"),
        path(other.path(), "node.pem"),
        path(other.path(), "node-key.pem"),
    )));
    // No certificate at all: plain HTTP/2 to a port that requires mutual TLS.
    let plain = start_core(core_toml(""));
    // The refusal reaches core as a failed connection (503 `unavailable`) or, when TLS 1.3
    // lets the client finish its side before the server checks its certificate, as a
    // transport error during the call (502 `upstream`).
    for core in [&foreign, &plain] {
        let r = admin(core, "GET", "/api/v1/ids/msg?count=5", None, None).await;
        let code = r.json()["error"]["code"].clone();
        assert!(
            matches!(
                (r.status, code.as_str()),
                (503, Some("unavailable")) | (502, Some("upstream"))
            ),
            "{} {}",
            r.status,
            r.body
        );
    }
    assert!(
        metric(
            &ids,
            "roam_refused_connections_total{reason=\"internal_tls\"}"
        )
        .await
            >= 2.0,
        "both refused in the handshake, and counted"
    );
    for p in [plain, foreign, core, ids] {
        assert_eq!(p.stop().unwrap().code(), Some(0));
    }
}
