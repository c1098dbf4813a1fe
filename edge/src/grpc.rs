//! The gRPC client transport: `roam.client.v1.Gateway/Connect`, a bidirectional stream of
//! `Frame { op, seq, body }` messages — the same operations as every other transport, framed
//! by HTTP/2 instead of the 16-byte header. Served on the client port next to the HTTP
//! routes, at the method's path.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use roam_proto::client::v1::Frame as PbFrame;
use roam_proto::client::v1::gateway_server::{Gateway as GatewayRpc, GatewayServer};
use roam_proto::{FrameDecoder, encode};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::admission::{ConnTicket, Hold};
use crate::conn::{FrameIo, Transport, drive_holding};
use crate::gateway::Gateway;

/// Frames buffered towards a gRPC client beyond the connection's outbox.
const SEND_QUEUE: usize = 16;

/// The tonic service over `gateway`. A message larger than the frame limit is refused by
/// tonic before it reaches the session.
pub(crate) fn service(gateway: Arc<Gateway>, tracker: TaskTracker) -> GatewayServer<GrpcGateway> {
    let max = gateway.config.max_packet;
    GatewayServer::new(GrpcGateway { gateway, tracker }).max_decoding_message_size(max)
}

/// The `Gateway` gRPC service; each stream's connection runs on `tracker`.
#[derive(Debug, Clone)]
pub(crate) struct GrpcGateway {
    gateway: Arc<Gateway>,
    tracker: TaskTracker,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<PbFrame, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayRpc for GrpcGateway {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<PbFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        // No slot of its own: the stream lives inside its HTTP/2 connection, which holds one;
        // a session of that connection (edge.max_sessions_per_conn, of which few
        // unauthenticated).
        let hold = match request.extensions().get::<ConnTicket>() {
            None => Hold::default(),
            Some(ticket) => match ticket.ticket().session() {
                Ok(permit) => Hold {
                    session: Some(permit),
                    ..Hold::default()
                },
                Err(_) => {
                    return Err(Status::resource_exhausted(
                        "this connection carries as many (unauthenticated) sessions as it may: authenticate them or open another connection",
                    ));
                }
            },
        };
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let io = GrpcIo {
            incoming: request.into_inner(),
            outgoing: tx,
        };
        let gateway = self.gateway.clone();
        self.tracker.spawn(async move {
            drive_holding(
                gateway,
                io,
                Transport {
                    name: "grpc",
                    http: "2",
                },
                hold,
            )
            .await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures_util::StreamExt::map(
            stream, Ok,
        ))))
    }
}

/// Frames over a gRPC stream: each message in becomes a frame for the driver; each frame of
/// a batch goes out as one message.
struct GrpcIo {
    incoming: Streaming<PbFrame>,
    outgoing: mpsc::Sender<PbFrame>,
}

impl FrameIo for GrpcIo {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self.incoming.message().await {
            Ok(Some(f)) => {
                let before = buf.len();
                encode(f.op, f.seq, &f.body, buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Ok(buf.len() - before)
            }
            Ok(None) => Ok(0),
            Err(status) => Err(io::Error::other(status)),
        }
    }

    async fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        // Frames here were encoded by the server: decoding them cannot fail.
        let decoder = FrameDecoder::new(usize::MAX);
        for bytes in frames {
            let mut b = bytes.clone();
            while let Ok(Some(f)) = decoder.decode_bytes(&mut b) {
                let msg = PbFrame {
                    op: f.op,
                    seq: f.seq,
                    body: f.body,
                };
                self.outgoing
                    .send(msg)
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            }
        }
        Ok(())
    }

    async fn close(&mut self) {}
}
