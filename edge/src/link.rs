//! The edge link, the edge's side: one `roam.internal.v1.EdgeLink/Link` stream to core.
//!
//! [`CoreLink::connect`] opens the stream, registers the edge and waits for core's
//! `Registered` (which says how often to heartbeat). Then [`CoreLink::sender`] queues
//! messages up (connects, disconnects, room changes, heartbeats, client ops) and
//! [`CoreLink::next`] yields what core sends down (connect results, deliveries, op replies,
//! kicks). The same link whether core runs in this process or elsewhere.

use std::collections::HashMap;
use std::time::Duration;

use roam_proto::internal::v1::edge_link_client::EdgeLinkClient;
use roam_proto::internal::v1::{EdgeDown, EdgeUp, Register, edge_down, edge_up};
use thiserror::Error;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Endpoint;

/// Messages queued up towards core before [`CoreLink::sender`] waits.
const UP_QUEUE: usize = 1024;

/// Why the link to core failed.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The core address is not a valid URI.
    #[error("bad core address {0:?}")]
    Address(String),
    /// Core could not be reached.
    #[error("cannot reach core at {address}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// Core refused this edge: a missing or wrong internal key, or its id is linked already.
    #[error("core refused the edge link ({code:?}): {message}")]
    Refused {
        /// The gRPC status code (`Unauthenticated`, `AlreadyExists`).
        code: tonic::Code,
        /// Core's explanation.
        message: String,
    },
    /// Core broke the stream.
    #[error("edge link: {0}")]
    Status(tonic::Status),
    /// Core answered the registration with something else.
    #[error("edge link: core did not confirm the registration")]
    NotRegistered,
}

impl From<tonic::Status> for LinkError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            code @ (tonic::Code::Unauthenticated | tonic::Code::AlreadyExists) => {
                LinkError::Refused {
                    code,
                    message: status.message().to_owned(),
                }
            }
            _ => LinkError::Status(status),
        }
    }
}

/// What an edge tells core about itself. Its `Default` is a new process instance (a random
/// [`instance`](EdgeIdentity::instance)) with every other field empty.
#[derive(Debug, Clone)]
pub struct EdgeIdentity {
    /// The internal port's key, sent with the link (see `roam_proto::internal_auth`).
    pub key: Option<roam_proto::internal_auth::InternalKey>,
    /// Unique id of the edge.
    pub edge_id: String,
    /// Public addresses by transport name (`client_tcp`, `client_quic`, `raw`).
    pub addresses: HashMap<String, String>,
    /// Region name.
    pub region: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Relative capacity (0: draining).
    pub weight: u32,
    /// A random id of this edge process, the same across its reconnects: core lets it
    /// replace its own stale link.
    pub instance: u64,
    /// Mutual TLS to core's internal port (`internal.tls`): the client configuration with
    /// this process's certificate; `None`: plain HTTP/2.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for EdgeIdentity {
    fn default() -> Self {
        EdgeIdentity {
            key: None,
            edge_id: String::new(),
            addresses: HashMap::new(),
            region: String::new(),
            lat: 0.0,
            lon: 0.0,
            weight: 0,
            instance: rand::random(),
            tls: None,
        }
    }
}

/// An open, registered link to core.
#[derive(Debug)]
pub struct CoreLink {
    up: mpsc::Sender<EdgeUp>,
    down: Streaming<EdgeDown>,
    heartbeat: Duration,
}

impl CoreLink {
    /// Connects to core at `address` (`http://host:port`) and registers `identity`.
    pub async fn connect(address: &str, identity: EdgeIdentity) -> Result<Self, LinkError> {
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|_| LinkError::Address(address.to_owned()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = match &identity.tls {
            None => endpoint.connect().await,
            Some(tls) => {
                endpoint
                    .connect_with_connector(roam_tls::internal::Connector::new(tls.clone()))
                    .await
            }
        }
        .map_err(|source| LinkError::Connect {
            address: address.to_owned(),
            source,
        })?;
        let (up, rx) = mpsc::channel(UP_QUEUE);
        let register = EdgeUp {
            msg: Some(edge_up::Msg::Register(Register {
                edge_id: identity.edge_id,
                addresses: identity.addresses,
                region: identity.region,
                lat: identity.lat,
                lon: identity.lon,
                weight: identity.weight,
                instance: identity.instance,
            })),
        };
        // The queue is empty and its receiver alive: this cannot fail.
        let _ = up.try_send(register);
        let mut client = EdgeLinkClient::new(channel);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(key) = &identity.key {
            key.attach(&mut request);
        }
        let mut down = client.link(request).await?.into_inner();
        let heartbeat = match down.message().await? {
            Some(EdgeDown {
                msg: Some(edge_down::Msg::Registered(r)),
            }) => Duration::from_millis(u64::from(r.heartbeat_ms.max(1))),
            _ => return Err(LinkError::NotRegistered),
        };
        Ok(CoreLink {
            up,
            down,
            heartbeat,
        })
    }

    /// A handle to send messages to core (cheap to clone).
    pub fn sender(&self) -> mpsc::Sender<EdgeUp> {
        self.up.clone()
    }

    /// How often core wants a heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// The next message from core; `None` when core ended the link.
    pub async fn next(&mut self) -> Result<Option<edge_down::Msg>, LinkError> {
        loop {
            match self.down.message().await? {
                Some(EdgeDown { msg: Some(msg) }) => return Ok(Some(msg)),
                Some(EdgeDown { msg: None }) => continue,
                None => return Ok(None),
            }
        }
    }
}
