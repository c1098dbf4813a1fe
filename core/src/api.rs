//! The business API of core (docs/contract.md §5) as an axum [`Router`]: pushes, presence, online
//! counts and the edge node list. Mount it on the admin listener behind [`require_api_key`].
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /api/v1/push/devices` `{"devices": [{"user", "device"}, ..], "content"}` | 202 `{"queued": n}` |
//! | `POST /api/v1/push/users` `{"users": [..], "content"}` | 202 `{"queued": n}` |
//! | `POST /api/v1/push/rooms` `{"rooms": [..], "content"}` | 202 `{"queued": n}` |
//! | `POST /api/v1/push/all` `{"content"}` | 202 `{"queued": n}` |
//! | `GET /api/v1/presence?users=a,b` | `{"users": [{"user", "online", "devices", "last_seen"}]}` |
//! | `GET /api/v1/online/total` | `{"total", "by_transport", "edges"}` |
//! | `GET /api/v1/online/rooms?top=N` | `{"rooms": [{"room", "online"}]}` |
//! | `GET /api/v1/edges?lat=..&lon=..` | `{"edges": [{"id", "region", "addresses", "weight", "connections"}]}` |
//!
//! A device is named with its user (`{"user": "alice", "device": "phone"}`): device ids are
//! the clients' own labels and only unique within one user's devices.
//!
//! `queued` counts the connections the push was queued for (for rooms and `all`, as the edges
//! last reported). Errors are `{"error": {"code", "message"}}`: 400 `invalid_argument`, 401
//! `unauthenticated`, 413 `too_large`, 429 `busy` (with `retry-after`), 503 `unavailable`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roam_proto::http_error::error_response;
use serde::Deserialize;
use serde_json::{Value, json};
use thiserror::Error;

use roam_messaging::{MessagingError, Page, SendRequest};

use crate::balancer;
use crate::link::total_connections;
use crate::metrics::RouteLabel;
use crate::push::{PushError, Target};
use crate::service::Core;
use crate::sessions::UserDevice;

/// Most entries one request may list (users, devices, rooms).
pub(crate) const MAX_LIST: usize = 1000;
/// Seconds a client should wait after a 429.
const RETRY_AFTER_SECS: u32 = 1;

/// An API failure, answered as JSON with its status.
#[derive(Debug, Error)]
pub(crate) enum ApiError {
    /// The request is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// No or a wrong API key.
    #[error("missing or invalid API key (Authorization: Bearer <key>)")]
    Unauthenticated,
    /// The content is too large for a client frame.
    #[error("{0}")]
    TooLarge(String),
    /// A queue is full; retry after a moment.
    #[error("{0}")]
    Busy(String),
    /// A dependency (the store) failed.
    #[error("{0}")]
    Unavailable(String),
    /// No such group.
    #[error("{0}")]
    NotFound(String),
    /// The user may not (not a member of the group).
    #[error("{0}")]
    Forbidden(String),
    /// The resource exists, or a configured limit would be exceeded.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The user sends faster than `messaging.send_rate`.
    #[error("{0}")]
    RateLimited(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(..) => StatusCode::CONFLICT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_argument",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Busy(_) => "busy",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotFound(_) => "not_found",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Conflict(code, _) => code,
            ApiError::RateLimited(_) => "rate_limited",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(
            self,
            ApiError::Busy(_) | ApiError::Unavailable(_) | ApiError::RateLimited(_)
        );
        error_response(
            self.status(),
            self.code(),
            &self.to_string(),
            retry.then_some(RETRY_AFTER_SECS),
        )
        .into_response()
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Busy { .. } => ApiError::Busy(e.to_string()),
            PushError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            PushError::Store(_) => ApiError::Unavailable(format!("{e}: retry")),
        }
    }
}

impl From<MessagingError> for ApiError {
    fn from(e: MessagingError) -> Self {
        let m = e.to_string();
        match e {
            MessagingError::Invalid(_) => ApiError::Invalid(m),
            MessagingError::TooLarge { .. } => ApiError::TooLarge(m),
            MessagingError::NotFound(_) => ApiError::NotFound(m),
            MessagingError::Forbidden(_) => ApiError::Forbidden(m),
            MessagingError::Exists(_) => ApiError::Conflict("exists", m),
            MessagingError::Limit(_) => ApiError::Conflict("limit_exceeded", m),
            MessagingError::RateLimited { .. } => ApiError::RateLimited(m),
            MessagingError::Store(_) | MessagingError::Ids(_) => ApiError::Unavailable(format!(
                "{m}; retry (a send with the same client_msg_id is safe)"
            )),
        }
    }
}

impl From<roam_store::StoreError> for ApiError {
    fn from(e: roam_store::StoreError) -> Self {
        ApiError::Unavailable(format!("the store failed: {e}"))
    }
}

type Answer<T> = Result<T, ApiError>;

/// The business routes over `core`.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v1/push/devices", post(push_devices))
        .route("/api/v1/push/users", post(push_users))
        .route("/api/v1/push/rooms", post(push_rooms))
        .route("/api/v1/push/all", post(push_all))
        .route("/api/v1/presence", get(presence))
        .route("/api/v1/online/total", get(online_total))
        .route("/api/v1/online/rooms", get(online_rooms))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/messages", post(send_message))
        .route("/api/v1/users/{user}/timeline", get(timeline))
        .route(
            "/api/v1/users/{user}/conversations/{peer}",
            get(conversation),
        )
        .route("/api/v1/users/{user}/unread", get(unread))
        .route("/api/v1/users/{user}/groups", get(user_groups))
        .route("/api/v1/groups", post(create_group))
        .route(
            "/api/v1/groups/{id}/members",
            get(group_members).post(add_members).delete(remove_members),
        )
        .layer(axum::middleware::from_fn_with_state(core.clone(), observe))
        .with_state(core)
}

/// Counts and times every request by route and status.
async fn observe(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    core.metrics
        .api_latency
        .observe(start.elapsed().as_secs_f64());
    core.metrics
        .api_requests
        .get_or_create(&RouteLabel {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// A tower layer (axum middleware) refusing requests without `Authorization: Bearer <key>`.
/// Compares in constant time.
pub async fn require_api_key(
    State(key): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::Unauthenticated.into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body<T>(json: Result<Json<T>, JsonRejection>) -> Answer<T> {
    json.map(|Json(t)| t)
        .map_err(|e| ApiError::Invalid(format!("request body: {}", e.body_text())))
}

/// Refuses an empty or oversized list.
fn bounded<T>(name: &str, items: &[T]) -> Answer<()> {
    if items.is_empty() {
        return Err(ApiError::Invalid(format!(
            "{name}: at least one is required"
        )));
    }
    if items.len() > MAX_LIST {
        return Err(ApiError::Invalid(format!(
            "{name}: at most {MAX_LIST} per request"
        )));
    }
    Ok(())
}

fn list(name: &str, items: Vec<String>) -> Answer<Vec<String>> {
    bounded(name, &items)?;
    if items.iter().any(String::is_empty) {
        return Err(ApiError::Invalid(format!(
            "{name}: empty entries are not allowed"
        )));
    }
    Ok(items)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushDevices {
    /// Checked entry by entry ([`device_list`]), so that each fault names its entry.
    devices: Vec<Value>,
    content: String,
}

/// One entry of `PushDevices::devices`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    user: String,
    device: String,
}

const DEVICE_SHAPE: &str = r#"{"user": "<user id>", "device": "<device id>"}"#;

/// The devices of a push: each an object naming the user and the user's device.
fn device_list(items: Vec<Value>) -> Answer<Vec<UserDevice>> {
    bounded("devices", &items)?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(ApiError::Invalid(format!(
                    "devices[{i}]: each device is an object {DEVICE_SHAPE}: a device id is \
                     unique only among its user's devices"
                )));
            }
            let entry: DeviceEntry = serde_json::from_value(item).map_err(|e| {
                ApiError::Invalid(format!("devices[{i}]: {e}; each device is {DEVICE_SHAPE}"))
            })?;
            if entry.user.is_empty() || entry.device.is_empty() {
                return Err(ApiError::Invalid(format!(
                    "devices[{i}]: user and device must not be empty"
                )));
            }
            Ok(UserDevice {
                user: entry.user,
                device: entry.device,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushUsers {
    users: Vec<String>,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRooms {
    rooms: Vec<String>,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushAll {
    content: String,
}

async fn queue(core: &Core, target: Target, content: String) -> Answer<(StatusCode, Json<Value>)> {
    let queued = core.push(target, content.into()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": queued }))))
}

async fn push_devices(
    State(core): State<Arc<Core>>,
    req: Result<Json<PushDevices>, JsonRejection>,
) -> Answer<(StatusCode, Json<Value>)> {
    let req = body(req)?;
    let devices = device_list(req.devices)?;
    queue(&core, Target::Devices(devices), req.content).await
}

async fn push_users(
    State(core): State<Arc<Core>>,
    req: Result<Json<PushUsers>, JsonRejection>,
) -> Answer<(StatusCode, Json<Value>)> {
    let req = body(req)?;
    let users = list("users", req.users)?;
    queue(&core, Target::Users(users), req.content).await
}

async fn push_rooms(
    State(core): State<Arc<Core>>,
    req: Result<Json<PushRooms>, JsonRejection>,
) -> Answer<(StatusCode, Json<Value>)> {
    let req = body(req)?;
    let rooms = list("rooms", req.rooms)?;
    queue(&core, Target::Rooms(rooms), req.content).await
}

async fn push_all(
    State(core): State<Arc<Core>>,
    req: Result<Json<PushAll>, JsonRejection>,
) -> Answer<(StatusCode, Json<Value>)> {
    let req = body(req)?;
    queue(&core, Target::All, req.content).await
}

#[derive(Deserialize)]
struct UsersQuery {
    users: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Answer<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::Invalid(format!("query string: {}", e.body_text())))
}

async fn presence(
    State(core): State<Arc<Core>>,
    q: Result<Query<UsersQuery>, QueryRejection>,
) -> Answer<Json<Value>> {
    let users: Vec<String> = query(q)?
        .users
        .unwrap_or_default()
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let users = list("users", users)?;
    let presence = core.sessions.presence(&users).await?;
    let users: Vec<Value> = presence
        .into_iter()
        .map(|p| {
            let devices: Vec<Value> = p
                .sessions
                .iter()
                .map(|s| {
                    json!({
                        "device": s.device, "platform": s.platform, "transport": s.transport,
                        "edge": s.edge, "connected_at": s.connected_at_ms,
                    })
                })
                .collect();
            json!({
                "user": p.user,
                "online": !p.sessions.is_empty(),
                "devices": devices,
                "last_seen": p.last_seen_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "users": users })))
}

async fn online_total(State(core): State<Arc<Core>>) -> Json<Value> {
    let (total, by_transport) = total_connections(&core);
    Json(json!({
        "total": total,
        "by_transport": by_transport,
        "edges": core.edges.live().len(),
    }))
}

#[derive(Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

async fn online_rooms(
    State(core): State<Arc<Core>>,
    q: Result<Query<TopQuery>, QueryRejection>,
) -> Answer<Json<Value>> {
    let top = query(q)?.top.unwrap_or(10);
    if !(1..=MAX_LIST).contains(&top) {
        return Err(ApiError::Invalid(format!(
            "top {top}: must be between 1 and {MAX_LIST}"
        )));
    }
    let mut rooms: HashMap<String, u64> = HashMap::new();
    for edge in core.edges.live() {
        for (room, n) in edge.rooms() {
            *rooms.entry(room).or_default() += n;
        }
    }
    let mut rooms: Vec<(String, u64)> = rooms.into_iter().collect();
    rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rooms.truncate(top);
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|(room, online)| json!({ "room": room, "online": online }))
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
}

#[derive(Deserialize)]
struct PositionQuery {
    lat: Option<f64>,
    lon: Option<f64>,
}

async fn edges(
    State(core): State<Arc<Core>>,
    q: Result<Query<PositionQuery>, QueryRejection>,
) -> Answer<Json<Value>> {
    let q = query(q)?;
    let position = match (q.lat, q.lon) {
        (None, None) => None,
        (Some(lat), Some(lon))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
        {
            Some((lat, lon))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::Invalid(
                "lat must be within [-90, 90] and lon within [-180, 180]".into(),
            ));
        }
        _ => {
            return Err(ApiError::Invalid(
                "give both lat and lon, or neither".into(),
            ));
        }
    };
    let live = core.edges.live();
    let infos = live.iter().map(|e| e.info()).collect();
    let edges: Vec<Value> = balancer::order(infos, position)
        .into_iter()
        .filter_map(|info| {
            let edge = live.iter().find(|e| e.id == info.id)?;
            Some(json!({
                "id": info.id,
                "region": info.region,
                "addresses": edge.meta().addresses,
                "weight": info.weight,
                "connections": info.connections,
            }))
        })
        .collect();
    Ok(Json(json!({ "edges": edges })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(items: Value) -> String {
        let items = serde_json::from_value(items).unwrap();
        match device_list(items) {
            Err(ApiError::Invalid(m)) => m,
            other => panic!("expected invalid_argument, got {other:?}"),
        }
    }

    #[test]
    fn devices_are_named_with_their_user() {
        let ok = device_list(
            serde_json::from_value(json!([
                {"user": "alice", "device": "phone"},
                {"device": "a/b", "user": "bob"},
            ]))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            ok,
            [
                UserDevice {
                    user: "alice".into(),
                    device: "phone".into()
                },
                UserDevice {
                    user: "bob".into(),
                    device: "a/b".into()
                },
            ]
        );
        for (items, needle) in [
            (json!([]), "at least one"),
            (json!(["phone"]), "devices[0]: each device is an object"),
            (json!([{"user": "a", "device": "b"}, 7]), "devices[1]"),
            (json!([{"device": "phone"}]), "missing field `user`"),
            (
                json!([{"user": "a", "device": "b", "x": 1}]),
                "unknown field `x`",
            ),
            (
                json!([{"user": "a", "device": 5}]),
                "devices[0]: invalid type",
            ),
            (json!([{"user": "", "device": "b"}]), "must not be empty"),
            (json!([{"user": "a", "device": ""}]), "must not be empty"),
        ] {
            let m = message(items.clone());
            assert!(m.contains(needle), "{items}: {m}");
        }
        let many = Value::Array(vec![json!({"user": "a", "device": "b"}); MAX_LIST + 1]);
        assert!(message(many).contains("at most"));
    }
}

// ---- Stored messaging (docs/api.md, "Messages" and "Groups") ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    from: String,
    to: String,
    client_msg_id: String,
    content: String,
    #[serde(default)]
    content_type: String,
}

async fn send_message(
    State(core): State<Arc<Core>>,
    req: Result<Json<SendBody>, JsonRejection>,
) -> Answer<Json<Value>> {
    let req = body(req)?;
    roam_messaging::check_user(&req.from).map_err(|e| ApiError::Invalid(format!("from: {e}")))?;
    let sent = core
        .send_message(
            SendRequest {
                from: req.from,
                to: req.to,
                client_msg_id: req.client_msg_id,
                content: req.content.into(),
                content_type: req.content_type,
            },
            None,
        )
        .await?;
    Ok(Json(json!({
        "id": sent.id,
        "seq": sent.seq,
        "duplicate": sent.duplicate,
        "conversation_seq": sent.message.conversation_seq,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
}

fn page_json(page: Page) -> Json<Value> {
    let messages: Vec<Value> = page
        .messages
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "seq": m.seq,
                "conversation_seq": m.conversation_seq,
                "from": m.from,
                "to": m.to,
                "content": String::from_utf8_lossy(&m.content),
                "content_type": m.content_type,
                "created_at": m.created_at,
            })
        })
        .collect();
    Json(json!({
        "messages": messages,
        "next_after": page.next_after,
        "has_more": page.has_more,
    }))
}

fn page_limit(limit: Option<usize>) -> Answer<usize> {
    match limit {
        Some(0) => Err(ApiError::Invalid("limit: at least 1".into())),
        Some(n) if n > roam_messaging::MAX_PAGE => Err(ApiError::Invalid(format!(
            "limit: at most {}",
            roam_messaging::MAX_PAGE
        ))),
        Some(n) => Ok(n),
        None => Ok(roam_messaging::DEFAULT_PAGE),
    }
}

fn user_path(user: &str) -> Answer<()> {
    roam_messaging::check_user(user).map_err(ApiError::from)
}

async fn timeline(
    State(core): State<Arc<Core>>,
    axum::extract::Path(user): axum::extract::Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Answer<Json<Value>> {
    let q = query(q)?;
    user_path(&user)?;
    let limit = page_limit(q.limit)?;
    Ok(page_json(
        core.messaging
            .sync(&user, q.after.unwrap_or(0), limit)
            .await?,
    ))
}

async fn conversation(
    State(core): State<Arc<Core>>,
    axum::extract::Path((user, peer)): axum::extract::Path<(String, String)>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Answer<Json<Value>> {
    let q = query(q)?;
    user_path(&user)?;
    let limit = page_limit(q.limit)?;
    Ok(page_json(
        core.messaging
            .history(
                &user,
                &peer,
                q.after.unwrap_or(0),
                q.before.unwrap_or(0),
                limit,
            )
            .await?,
    ))
}

async fn unread(
    State(core): State<Arc<Core>>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Answer<Json<Value>> {
    let unread = core.messaging.unread(&user).await?;
    let total: u64 = unread.iter().map(|u| u.unread).sum();
    let conversations: Vec<Value> = unread
        .into_iter()
        .map(|u| {
            json!({
                "conversation": u.conversation,
                "unread": u.unread,
                "read_seq": u.read_seq,
                "latest_seq": u.latest_seq,
            })
        })
        .collect();
    Ok(Json(
        json!({ "total": total, "conversations": conversations }),
    ))
}

async fn user_groups(
    State(core): State<Arc<Core>>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Answer<Json<Value>> {
    let groups = core.messaging.groups_of(&user).await?;
    Ok(Json(json!({ "groups": groups })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    id: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

async fn create_group(
    State(core): State<Arc<Core>>,
    req: Result<Json<CreateGroup>, JsonRejection>,
) -> Answer<(StatusCode, Json<Value>)> {
    let req = body(req)?;
    if req.members.len() > MAX_LIST {
        return Err(ApiError::Invalid(format!(
            "members: at most {MAX_LIST} per request"
        )));
    }
    let id = match req.id {
        Some(id) => id,
        None => core.messaging.new_group_id().await?,
    };
    let g = core
        .messaging
        .create_group(&id, &req.members, crate::service::now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": g.id, "members": g.members, "created_at": g.created_at_ms })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    users: Vec<String>,
}

async fn group_members(
    State(core): State<Arc<Core>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Answer<Json<Value>> {
    let members = core.messaging.members(&id).await?;
    Ok(Json(json!({ "id": id, "members": members })))
}

async fn add_members(
    State(core): State<Arc<Core>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Result<Json<Members>, JsonRejection>,
) -> Answer<Json<Value>> {
    let users = list("users", body(req)?.users)?;
    let g = core
        .messaging
        .add_members(&id, &users, crate::service::now_ms())
        .await?;
    Ok(Json(json!({ "id": g.id, "members": g.members })))
}

async fn remove_members(
    State(core): State<Arc<Core>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Result<Json<Members>, JsonRejection>,
) -> Answer<Json<Value>> {
    let users = list("users", body(req)?.users)?;
    let g = core.messaging.remove_members(&id, &users).await?;
    Ok(Json(json!({ "id": g.id, "members": g.members })))
}
