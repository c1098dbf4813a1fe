//! [`IdSource`]: where core gets IDs — the service in this process, or a remote one over
//! gRPC. Both answer with the same [`IdError`] kinds.

use crate::flake::layout::{Decoded, Generator};
use crate::{IdError, IdService};
use roam_proto::idsvc::v1::{
    CreateTagRequest, DecodeRequest, NextIdsRequest, SnowflakeRequest,
    id_service_client::IdServiceClient,
};
use roam_proto::internal_auth::{AttachKey, InternalKey};
use std::{sync::Arc, time::Duration};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// An ID service to call: in-process when the roles share a process, remote otherwise.
#[derive(Debug, Clone)]
pub enum IdSource {
    /// The service of this process: a plain method call.
    Local(Arc<IdService>),
    /// A service on another process, over gRPC (`roam.idsvc.v1.IdService`).
    Remote(IdServiceClient<InterceptedService<Channel, AttachKey>>),
}

impl IdSource {
    /// The service of this process.
    pub fn local(service: Arc<IdService>) -> Self {
        Self::Local(service)
    }

    /// A remote service over an existing channel.
    pub fn remote(channel: Channel) -> Self {
        Self::remote_with_key(channel, None)
    }

    /// A remote service over an existing channel, every call carrying the internal port's
    /// `key` (see [`roam_proto::internal_auth`]).
    pub fn remote_with_key(channel: Channel, key: Option<InternalKey>) -> Self {
        Self::Remote(IdServiceClient::with_interceptor(channel, AttachKey(key)))
    }

    fn endpoint(uri: &str, timeout: Duration) -> Result<Endpoint, IdError> {
        Ok(Endpoint::from_shared(uri.to_owned())
            .map_err(|e| IdError::invalid(format!("id service address {uri:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout))
    }

    /// Connects to a remote service at `uri` (`http://host:port`, plain HTTP/2), with a
    /// per-call deadline of `timeout`.
    pub async fn connect(uri: &str, timeout: Duration) -> Result<Self, IdError> {
        let channel = Self::endpoint(uri, timeout)?.connect().await.map_err(|e| {
            IdError::Unavailable(format!("cannot connect to the id service at {uri}: {e}"))
        })?;
        Ok(Self::remote(channel))
    }

    /// A remote service at `uri` that is connected on first use (and reconnected after a
    /// failure): a process may start before the ID service does; calls made while it is
    /// unreachable fail with [`IdError::Unavailable`]. Every call carries `key`.
    pub fn connect_lazy(
        uri: &str,
        timeout: Duration,
        key: Option<InternalKey>,
    ) -> Result<Self, IdError> {
        Ok(Self::remote_with_key(
            Self::endpoint(uri, timeout)?.connect_lazy(),
            key,
        ))
    }

    /// The service of this process, if it is one.
    pub fn as_local(&self) -> Option<&Arc<IdService>> {
        match self {
            Self::Local(s) => Some(s),
            Self::Remote(_) => None,
        }
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
                    Err(s) => Err(tag_error(tag, s)),
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

    /// Takes apart an ID of a time-based generator (its layout is the service's).
    pub async fn decode(&self, generator: Generator, id: u64) -> Result<Decoded, IdError> {
        match self {
            Self::Local(s) => s.decode(generator, id),
            Self::Remote(c) => {
                let request = DecodeRequest {
                    id,
                    generator: generator.name().to_owned(),
                };
                let d = c.clone().decode(request).await?.into_inner();
                Ok(Decoded {
                    timestamp_ms: d.timestamp_ms,
                    worker: d.worker,
                    sequence: d.sequence,
                })
            }
        }
    }

    /// Creates segment tag `tag` with its first step and first ID.
    pub async fn create_tag(&self, tag: &str, step: u64, start: u64) -> Result<(), IdError> {
        match self {
            Self::Local(s) => s.create_tag(tag, step, start).await,
            Self::Remote(c) => {
                let request = CreateTagRequest {
                    tag: tag.to_owned(),
                    step,
                    start,
                };
                match c.clone().create_tag(request).await {
                    Ok(_) => Ok(()),
                    Err(s) => Err(tag_error(tag, s)),
                }
            }
        }
    }
}

/// The error a remote service's status about `tag` stands for.
fn tag_error(tag: &str, s: tonic::Status) -> IdError {
    match s.code() {
        tonic::Code::NotFound => IdError::UnknownTag { tag: tag.into() },
        tonic::Code::AlreadyExists => IdError::TagExists { tag: tag.into() },
        tonic::Code::FailedPrecondition => IdError::Exhausted(s.message().to_owned()),
        _ => s.into(),
    }
}
