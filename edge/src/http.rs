//! The HTTP routes of the client port: `GET /healthz`; `GET /v1/ws` — a WebSocket over
//! HTTP/1.1 Upgrade or HTTP/2 extended CONNECT (RFC 8441, many WebSockets on one TCP
//! connection), carrying frames (one binary message = one or more frames) through the same
//! connection driver as every transport; and `POST /roam.client.v1.Gateway/Connect`, the
//! gRPC `Gateway` service ([`crate::grpc`]).

use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::{Bytes, BytesMut};

use crate::conn::{FrameIo, drive};
use crate::gateway::Gateway;

/// The client port's routes over `gateway`, with the gRPC `Gateway` service (tonic) at its
/// method path.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let grpc = crate::grpc::service(gateway.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/ws", any(websocket))
        .route_service("/roam.client.v1.Gateway/Connect", grpc)
        .with_state(gateway)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

fn unavailable(message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "unavailable", "message": message}});
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "5")],
        axum::Json(body),
    )
        .into_response()
}

async fn websocket(State(gateway): State<Arc<Gateway>>, upgrade: WebSocketUpgrade) -> Response {
    let Some(permit) = gateway.admit() else {
        return unavailable("the edge is at its connection limit");
    };
    let max = gateway.config.max_packet;
    upgrade
        // Small buffers: an idle WebSocket should cost little (tungstenite's default read
        // buffer is 128 KiB).
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(max * 16)
        .max_frame_size(max * 16)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            drive(gateway, WsIo { socket }, "ws").await;
        })
}

/// Frames over a WebSocket: binary messages in, one binary message per batch out.
struct WsIo {
    socket: WebSocket,
}

impl FrameIo for WsIo {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.socket.recv().await {
                Some(Ok(Message::Binary(bytes))) if !bytes.is_empty() => {
                    buf.extend_from_slice(&bytes);
                    return Ok(bytes.len());
                }
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text messages are not frames",
                    ));
                }
                Some(Ok(Message::Close(_))) | None => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    async fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        let message = match frames {
            [] => return Ok(()),
            [one] => one.clone(),
            many => {
                let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                for f in many {
                    joined.extend_from_slice(f);
                }
                joined.freeze()
            }
        };
        self.socket
            .send(Message::Binary(message))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}
