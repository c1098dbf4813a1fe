//! The gRPC client transport, `roam.client.v1.Gateway/Connect`, over TLS 1.3 + HTTP/2 on the
//! client port, with tonic as the client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use prost::Message;
use roam_bench::child::ChildServer;
use roam_core::auth::Secret;
use roam_proto::Op;
use roam_proto::client::v1 as pb;
use roam_proto::client::v1::gateway_client::GatewayClient;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

async fn client(server: &ChildServer) -> GatewayClient<tonic::transport::Channel> {
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).unwrap();
    let config = roam_tls::client_config(roots, &[b"h2"]);
    let addr = server.addr("client_tcp").unwrap();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let tls = TlsConnector::from(config).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    GatewayClient::new(channel)
}

fn frame(op: Op, seq: u32, body: impl Message) -> pb::Frame {
    pb::Frame {
        op: op.code(),
        seq,
        body: body.encode_to_vec().into(),
    }
}

async fn next(stream: &mut tonic::Streaming<pb::Frame>) -> pb::Frame {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no frame within 5 s")
        .unwrap()
        .expect("the stream ended")
}

#[tokio::test]
async fn a_grpc_consumer_authenticates_heartbeats_and_receives_pushes() {
    let server = roam_tests::start("");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = Secret::load_or_create(&server.data_dir())
        .unwrap()
        .mint("svc", None, 600, now)
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut down = client(&server)
        .await
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(frame(
        Op::Auth,
        1,
        pb::Auth {
            token,
            device_id: "svc-1".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let f = next(&mut down).await;
    assert_eq!((f.op, f.seq), (Op::AuthReply.code(), 1));
    assert_eq!(pb::AuthReply::decode(f.body).unwrap().user_id, "svc");

    tx.send(frame(Op::Heartbeat, 2, pb::Heartbeat {}))
        .await
        .unwrap();
    let f = next(&mut down).await;
    assert_eq!((f.op, f.seq), (Op::HeartbeatReply.code(), 2));

    let r = roam_tests::push(
        &server,
        "users",
        serde_json::json!({"users": ["svc"], "content": "grpc!"}),
    )
    .await;
    assert_eq!(r.status, 202);
    let f = next(&mut down).await;
    assert_eq!(f.op, Op::Push.code());
    let Some(pb::push::Kind::Ephemeral(e)) = pb::Push::decode(f.body).unwrap().kind else {
        panic!()
    };
    assert_eq!(&e.content[..], b"grpc!");

    // An unknown op is answered with ERROR; the stream stays up.
    tx.send(pb::Frame {
        op: 999,
        seq: 3,
        body: Default::default(),
    })
    .await
    .unwrap();
    let f = next(&mut down).await;
    assert_eq!((f.op, f.seq), (Op::Error.code(), 3));
}

/// The case of the issue, with an independent client (Python grpcio, installed by
/// scripts/setup): AUTH, HEARTBEAT and ROOM_JOIN sent at once, before AUTH_REPLY.
#[tokio::test]
async fn a_python_grpcio_client_sends_auth_and_requests_in_one_flight() {
    let server = roam_tests::start("");
    let script = r#"
import sys, threading
import grpc

def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])

def field_bytes(field, b):
    return bytes([field << 3 | 2]) + varint(len(b)) + b

def field_varint(field, n):
    return bytes([field << 3]) + varint(n)

def frame(op, seq, body):
    return field_varint(1, op) + field_varint(2, seq) + field_bytes(3, body)

def parse(buf):
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        if key & 7 == 0:
            fields[key >> 3], i = read_varint(buf, i)
        else:
            n, i = read_varint(buf, i)
            fields[key >> 3] = buf[i:i + n]
            i += n
    return fields

def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i

addr, cafile, token = sys.argv[1:]
creds = grpc.ssl_channel_credentials(root_certificates=open(cafile, "rb").read())
channel = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
connect = channel.stream_stream(
    "/roam.client.v1.Gateway/Connect",
    request_serializer=lambda b: b,
    response_deserializer=parse,
)
done = threading.Event()

def requests():
    yield frame(1, 1, field_bytes(1, token.encode()) + field_bytes(2, b"py-grpc"))
    yield frame(3, 2, b"")
    yield frame(13, 3, field_bytes(1, b"lobby"))
    done.wait(10)

got = []
for f in connect(requests(), timeout=10):
    got.append((f.get(1, 0), f.get(2, 0)))
    if len(got) == 3:
        break
done.set()
assert got[0] == (2, 1), got
assert sorted(got[1:]) == [(4, 2), (14, 3)], got
print("ok")
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!(
            "127.0.0.1:{}",
            server.addr("client_tcp").unwrap().port()
        ))
        .arg(server.dev_cert())
        .arg(roam_tests::token(&server, "py"))
        .output()
        .await
        .expect("python3 runs (scripts/setup installs the grpcio package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "python grpcio client failed:\n{stdout}\n{stderr}"
    );
}
