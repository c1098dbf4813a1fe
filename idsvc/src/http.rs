//! The business HTTP routes of the ID service (docs/contract.md §5), as an axum [`Router`] to mount on
//! the admin listener (authentication is the listener's layer, not this module's).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/ids/{tag}?count=N` | `{"ids": [1001, 1002]}`: segment IDs, JSON numbers (always below 2^53) |
//! | `GET /api/v1/ids/snowflake?count=N` | `{"ids": ["2739...", ...]}`: strings (past 2^53) |
//! | `GET /api/v1/ids/sonyflake?count=N` | likewise |
//! | `GET /api/v1/ids/snowflake/{id}`, `/sonyflake/{id}` | the ID taken apart |
//! | `POST /api/v1/ids/tags` `{"tag", "step", "start"?}` | 201, the tag; 409 if it exists |
//! | `GET /api/v1/ids/_state` | per-tag buffers and both leases (Leaf's cache page); only where the service runs in this process |
//!
//! The routes call an [`IdSource`]: the service of this process, or (in a process that runs
//! core but not the ID service) the ID service of another process over gRPC.
//!
//! `count` is 1 (default) to `max_count`. Errors are `{"error": {"code", "message"}}`:
//! 400 `invalid_argument`, 404 `not_found`, 409 `already_exists` / `exhausted`, 503
//! `unavailable` / `clock_moved_backwards` (with `retry-after: 1`).

use crate::{IdError, IdSource, flake::layout::Generator};
use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The routes, over a service in this process or a remote one.
pub fn router(source: IdSource) -> Router {
    let mut router = Router::new()
        .route("/api/v1/ids/tags", post(create_tag))
        .route("/api/v1/ids/snowflake", get(snowflake))
        .route("/api/v1/ids/sonyflake", get(sonyflake))
        .route("/api/v1/ids/snowflake/{id}", get(decode_snowflake))
        .route("/api/v1/ids/sonyflake/{id}", get(decode_sonyflake));
    if let Some(service) = source.as_local().cloned() {
        // A static path wins over `{tag}` in axum's router whatever the order.
        router = router.route(
            "/api/v1/ids/_state",
            get(move || std::future::ready(Json(service.state()))),
        );
    }
    router
        .route("/api/v1/ids/{tag}", get(segment_ids))
        .with_state(source)
}

impl IntoResponse for IdError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let retry = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        roam_proto::http_error::error_response(status, self.code(), &self.to_string(), retry)
            .into_response()
    }
}

type Answer<T> = Result<T, IdError>;

#[derive(Debug, Deserialize)]
struct CountQuery {
    count: Option<String>,
}

/// `count` from the query string: absent means 1; the range is checked by the service.
fn count(query: Result<Query<CountQuery>, QueryRejection>) -> Answer<u32> {
    let Query(q) = query.map_err(|e| IdError::invalid(format!("query string: {e}")))?;
    match q.count {
        None => Ok(1),
        Some(c) => c
            .parse()
            .map_err(|_| IdError::invalid(format!("count {c:?}: not a whole number"))),
    }
}

#[derive(Serialize)]
struct Numbers {
    ids: Vec<u64>,
}

#[derive(Serialize)]
struct Strings {
    ids: Vec<String>,
}

async fn segment_ids(
    State(svc): State<IdSource>,
    Path(tag): Path<String>,
    query: Result<Query<CountQuery>, QueryRejection>,
) -> Answer<Json<Numbers>> {
    let n = count(query)?;
    Ok(Json(Numbers {
        ids: svc.next_ids(&tag, n).await?,
    }))
}

async fn flake(svc: &IdSource, generator: Generator, n: u32) -> Answer<Json<Strings>> {
    let ids = svc.flake_ids(generator, n).await?;
    Ok(Json(Strings {
        ids: ids.iter().map(u64::to_string).collect(),
    }))
}

async fn snowflake(
    State(svc): State<IdSource>,
    query: Result<Query<CountQuery>, QueryRejection>,
) -> Answer<Json<Strings>> {
    flake(&svc, Generator::Snowflake, count(query)?).await
}

async fn sonyflake(
    State(svc): State<IdSource>,
    query: Result<Query<CountQuery>, QueryRejection>,
) -> Answer<Json<Strings>> {
    flake(&svc, Generator::Sonyflake, count(query)?).await
}

async fn decode(svc: &IdSource, generator: Generator, id: &str) -> Answer<Json<serde_json::Value>> {
    let n: u64 = id
        .parse()
        .map_err(|_| IdError::invalid(format!("id {id:?}: not a whole number")))?;
    let d = svc.decode(generator, n).await?;
    Ok(Json(json!({
        "id": n.to_string(),
        "generator": generator.name(),
        "timestamp_ms": d.timestamp_ms,
        "worker": d.worker,
        "sequence": d.sequence,
    })))
}

async fn decode_snowflake(
    State(svc): State<IdSource>,
    Path(id): Path<String>,
) -> Answer<Json<serde_json::Value>> {
    decode(&svc, Generator::Snowflake, &id).await
}

async fn decode_sonyflake(
    State(svc): State<IdSource>,
    Path(id): Path<String>,
) -> Answer<Json<serde_json::Value>> {
    decode(&svc, Generator::Sonyflake, &id).await
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NewTag {
    tag: String,
    step: u64,
    #[serde(default)]
    start: u64,
}

async fn create_tag(
    State(svc): State<IdSource>,
    body: Result<Json<NewTag>, JsonRejection>,
) -> Answer<(StatusCode, Json<NewTag>)> {
    let Json(mut t) = body.map_err(|e| IdError::invalid(format!("body: {}", e.body_text())))?;
    svc.create_tag(&t.tag, t.step, t.start).await?;
    t.start = crate::segment::first_id(t.start);
    Ok((StatusCode::CREATED, Json(t)))
}
