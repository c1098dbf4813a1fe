//! [`IdSource`]: where core gets IDs — the service in this process, or a remote one over
//! gRPC. Both answer with the same [`IdError`] kinds.

use crate::{IdError, IdService, flake::layout::Generator};
use roam_proto::idsvc::v1::{NextIdsRequest, SnowflakeRequest, id_service_client::IdServiceClient};
use std::{sync::Arc, time::Duration};
use tonic::transport::{Channel, Endpoint};

/// An ID service to call: in-process when the roles share a process, remote otherwise.
#[derive(Debug, Clone)]
pub enum IdSource {
    /// The service of this process: a plain method call.
    Local(Arc<IdService>),
    /// A service on another process, over gRPC (`roam.idsvc.v1.IdService`).
    Remote(IdServiceClient<Channel>),
}

impl IdSource {
    /// The service of this process.
    pub fn local(service: Arc<IdService>) -> Self {
        Self::Local(service)
    }

    /// A remote service over an existing channel.
    pub fn remote(channel: Channel) -> Self {
        Self::Remote(IdServiceClient::new(channel))
    }

    /// Connects to a remote service at `uri` (`http://host:port`, plain HTTP/2), with a
    /// per-call deadline of `timeout`.
    pub async fn connect(uri: &str, timeout: Duration) -> Result<Self, IdError> {
        let endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| IdError::invalid(format!("id service address {uri:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| {
            IdError::Unavailable(format!("cannot connect to the id service at {uri}: {e}"))
        })?;
        Ok(Self::remote(channel))
    }

    /// `count` segment IDs of `tag`.
    pub async fn next_ids(&self, tag: &str, count: u32) -> Result<Vec<u64>, IdError> {
        match self {
            Self::Local(s) => s.next_ids(tag, count).await,
            Self::Remote(c) => {
                let request = NextIdsRequest {
                    tag: tag.to_owned(),
                    count,
                };
                match c.clone().next_ids(request).await {
                    Ok(r) => Ok(r.into_inner().ids),
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        Err(IdError::UnknownTag { tag: tag.into() })
                    }
                    Err(s) => Err(s.into()),
                }
            }
        }
    }

    /// One segment ID of `tag`.
    pub async fn next_id(&self, tag: &str) -> Result<u64, IdError> {
        let ids = self.next_ids(tag, 1).await?;
        ids.first()
            .copied()
            .ok_or_else(|| IdError::Unavailable("the id service returned no ID".into()))
    }

    /// `count` IDs of a time-based generator.
    pub async fn flake_ids(&self, generator: Generator, count: u32) -> Result<Vec<u64>, IdError> {
        match self {
            Self::Local(s) => s.flake_ids(generator, count).await,
            Self::Remote(c) => {
                let mut c = c.clone();
                let request = SnowflakeRequest { count };
                let reply = match generator {
                    Generator::Snowflake => c.snowflake(request).await,
                    Generator::Sonyflake => c.sonyflake(request).await,
                };
                Ok(reply?.into_inner().ids)
            }
        }
    }
}
