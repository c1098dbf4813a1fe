//! Pushes (goim's job): ephemeral messages to devices, users, rooms or everyone, delivered
//! through the edges' queues as one pre-encoded PUSH frame shared by every recipient.
//!
//! Targets resolve to edges: devices (always named with their user) and users through the
//! sessions layer (to connection ids on each edge), rooms to the edges that reported members,
//! everyone to every live edge. Deliveries address connection ids, never device ids.
//! A push reserves a place in every target edge's queue before it sends to any, so it is
//! either queued everywhere or refused as a whole with [`PushError::Busy`] (HTTP 429): a slow
//! edge never makes memory grow, and never receives half a push.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::{self as link, EdgeDown, deliver, edge_down};
use roam_proto::{Op, frame_of};
use roam_store::StoreError;
use thiserror::Error;
use tokio::sync::mpsc::error::TrySendError;

use crate::edges::Edge;
use crate::metrics::{EdgeLabel, KindLabel};
use crate::service::{Core, now_ms};
use crate::sessions::{Session, UserDevice};

/// Whom a push is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// These devices, each of its user (their current connection).
    Devices(Vec<UserDevice>),
    /// Every connected device of these users.
    Users(Vec<String>),
    /// Every member of these rooms.
    Rooms(Vec<String>),
    /// Every connection.
    All,
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Devices(_) => "devices",
            Target::Users(_) => "users",
            Target::Rooms(_) => "rooms",
            Target::All => "all",
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Error)]
pub(crate) enum PushError {
    /// An edge the push would reach has a full queue: retry after a moment.
    #[error("edge {edge} is busy: its delivery queue is full")]
    Busy {
        /// The busy edge.
        edge: String,
    },
    /// The content is larger than a client frame allows.
    #[error("content is {len} bytes; the maximum is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Routing needs the store, which failed.
    #[error("cannot resolve the push's recipients")]
    Store(#[from] StoreError),
}

/// One delivery for one edge.
struct Planned {
    edge: Arc<Edge>,
    target: deliver::Target,
    recipients: u64,
}

impl Core {
    /// Queues `content` for `target`; returns the number of connections it was queued for.
    pub(crate) async fn push(&self, target: Target, content: Bytes) -> Result<u64, PushError> {
        if content.len() > self.options.max_content {
            return Err(PushError::TooLarge {
                len: content.len(),
                max: self.options.max_content,
            });
        }
        let room = match &target {
            Target::Rooms(rooms) if rooms.len() == 1 => rooms[0].clone(),
            _ => String::new(),
        };
        let kind = target.kind();
        let plan = self.plan(target).await?;
        let frames = push_frame(room, content);
        // Reserve everywhere first: all or nothing.
        let mut reserved = Vec::with_capacity(plan.len());
        for p in plan {
            match p.edge.sender().clone().try_reserve_owned() {
                Ok(permit) => reserved.push((p, permit)),
                Err(TrySendError::Full(_)) => {
                    self.metrics.pushes_rejected_busy.inc();
                    return Err(PushError::Busy {
                        edge: p.edge.id.clone(),
                    });
                }
                // The edge's link just ended: it gets nothing, like an edge already gone.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        let mut recipients = 0;
        for (p, permit) in reserved {
            permit.send(EdgeDown {
                msg: Some(edge_down::Msg::Deliver(link::Deliver {
                    target: Some(p.target),
                    frames: frames.clone(),
                })),
            });
            recipients += p.recipients;
            self.metrics
                .edge_queue_depth
                .get_or_create(&EdgeLabel {
                    edge: p.edge.id.clone(),
                })
                .set(p.edge.queue_depth() as i64);
        }
        self.metrics.pushes.get_or_create(&KindLabel { kind }).inc();
        Ok(recipients)
    }

    async fn plan(&self, target: Target) -> Result<Vec<Planned>, StoreError> {
        Ok(match target {
            Target::Devices(devices) => {
                self.by_conn(self.sessions.sessions_of_devices(&devices).await?)
            }
            Target::Users(users) => self.by_conn(self.sessions.sessions_of_users(&users).await?),
            Target::Rooms(rooms) => {
                let mut plan = Vec::new();
                for edge in self.edges.live() {
                    for room in &rooms {
                        let members = edge.room_members(room);
                        if members > 0 {
                            plan.push(Planned {
                                edge: edge.clone(),
                                target: deliver::Target::Room(room.clone()),
                                recipients: members,
                            });
                        }
                    }
                }
                plan
            }
            Target::All => self
                .edges
                .live()
                .into_iter()
                .map(|edge| Planned {
                    recipients: edge.connections(),
                    edge,
                    target: deliver::Target::All(true),
                })
                .collect(),
        })
    }

    /// Groups sessions by live edge into one `conns` delivery per edge.
    fn by_conn(&self, sessions: Vec<Session>) -> Vec<Planned> {
        let mut per_edge: HashMap<String, Vec<u64>> = HashMap::new();
        for s in sessions {
            per_edge.entry(s.edge).or_default().push(s.conn);
        }
        per_edge
            .into_iter()
            .filter_map(|(id, conns)| {
                let edge = self.edges.get(&id)?;
                Some(Planned {
                    edge,
                    recipients: conns.len() as u64,
                    target: deliver::Target::Conns(link::ConnIds { ids: conns }),
                })
            })
            .collect()
    }
}

/// The PUSH frame for an ephemeral push, encoded once.
fn push_frame(room: String, content: Bytes) -> Bytes {
    let msg = pb::Push {
        kind: Some(pb::push::Kind::Ephemeral(pb::Ephemeral {
            room,
            content,
            created_at: now_ms(),
        })),
    };
    // The content was checked against the maximum, far below the u32 frame limit.
    frame_of(Op::Push, 0, &msg).unwrap_or_default()
}
