//! The gRPC service `roam.idsvc.v1.IdService` over an [`IdService`], for the internal port.
//!
//! Statuses: `NOT_FOUND` (unknown tag), `INVALID_ARGUMENT` (count, tag name, step, generator),
//! `ALREADY_EXISTS` (tag), `UNAVAILABLE` (no ID can be issued now: store, lease, clock,
//! shutdown), `FAILED_PRECONDITION` (an ID space is used up).

use crate::{IdService, flake::layout::Generator};
use roam_proto::idsvc::v1::{
    CreateTagReply, CreateTagRequest, DecodeRequest, DecodedId, Ids, NextIdsRequest,
    SnowflakeRequest, id_service_server,
};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The tonic service to add to a `tonic::transport::Server` (or a tonic `Routes`).
pub fn grpc_service(service: Arc<IdService>) -> id_service_server::IdServiceServer<GrpcIdService> {
    id_service_server::IdServiceServer::new(GrpcIdService(service))
}

/// Serves only the ID service on `listener` (plain HTTP/2) until `shutdown`; connections
/// are drained on the way out. For a role that runs nothing else on its internal port, and
/// for `roam bench ids`.
pub async fn serve(
    listener: TcpListener,
    service: Arc<IdService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(grpc_service(service))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// The `id_service_server::IdService` implementation.
#[derive(Debug, Clone)]
pub struct GrpcIdService(Arc<IdService>);

#[tonic::async_trait]
impl id_service_server::IdService for GrpcIdService {
    async fn next_ids(&self, request: Request<NextIdsRequest>) -> Result<Response<Ids>, Status> {
        let r = request.into_inner();
        let ids = self.0.next_ids(&r.tag, r.count).await?;
        Ok(Response::new(Ids { ids }))
    }

    async fn snowflake(&self, request: Request<SnowflakeRequest>) -> Result<Response<Ids>, Status> {
        let count = request.into_inner().count;
        let ids = self.0.flake_ids(Generator::Snowflake, count).await?;
        Ok(Response::new(Ids { ids }))
    }

    async fn sonyflake(&self, request: Request<SnowflakeRequest>) -> Result<Response<Ids>, Status> {
        let count = request.into_inner().count;
        let ids = self.0.flake_ids(Generator::Sonyflake, count).await?;
        Ok(Response::new(Ids { ids }))
    }

    async fn decode(&self, request: Request<DecodeRequest>) -> Result<Response<DecodedId>, Status> {
        let r = request.into_inner();
        let d = self.0.decode(Generator::parse(&r.generator)?, r.id)?;
        Ok(Response::new(DecodedId {
            timestamp_ms: d.timestamp_ms,
            worker: d.worker,
            sequence: d.sequence,
        }))
    }

    async fn create_tag(
        &self,
        request: Request<CreateTagRequest>,
    ) -> Result<Response<CreateTagReply>, Status> {
        let r = request.into_inner();
        self.0.create_tag(&r.tag, r.step, r.start).await?;
        Ok(Response::new(CreateTagReply {}))
    }
}
