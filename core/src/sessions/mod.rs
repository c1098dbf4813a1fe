//! Sessions and presence, kept in the store so they outlive any one process: which device of
//! which user is connected through which edge (and connection), when each user was last
//! online, and each device's adaptive heartbeat interval. Key layout: `sessions/keys.rs`.
//!
//! A device is always named with its user ([`UserDevice`]): device ids are the clients' own
//! labels, unique only among one user's devices, so no user can displace, read or receive
//! another user's device traffic by picking the same id.
//!
//! [`Sessions`] is the layer; core calls [`Sessions::upgrade`] once at start,
//! [`Sessions::connect`] when an edge authenticates a client, [`Sessions::disconnect`] when
//! the connection ends, and [`Sessions::expire_edge`] when an edge stops heartbeating (so
//! presence survives an edge crash).

mod keys;

use roam_store::codec::{decode, encode};
use roam_store::{RangeOption, Store, StoreError, TxError};

use keys::{LAYOUT, V1};

/// One device of one user: how pushes address a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserDevice {
    /// The user.
    pub(crate) user: String,
    /// The device, as the user's client named it (AUTH's `device_id`).
    pub(crate) device: String,
}

/// Where a session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The user.
    pub(crate) user: String,
    /// The device.
    pub(crate) device: String,
    /// The edge holding the connection.
    pub(crate) edge: String,
    /// The connection on that edge.
    pub(crate) conn: u64,
    /// The client's platform (free text).
    pub(crate) platform: String,
    /// The transport (`ws`, `raw`, ...).
    pub(crate) transport: String,
    /// When it connected, ms since the Unix epoch.
    pub(crate) connected_at_ms: u64,
}

/// A new session, as [`Sessions::connect`] takes it.
#[derive(Debug, Clone)]
pub(crate) struct NewSession<'a> {
    /// The authenticated user.
    pub(crate) user: &'a str,
    /// The device.
    pub(crate) device: &'a str,
    /// The edge.
    pub(crate) edge: &'a str,
    /// The connection on the edge.
    pub(crate) conn: u64,
    /// Platform.
    pub(crate) platform: &'a str,
    /// Transport.
    pub(crate) transport: &'a str,
}

/// What [`Sessions::connect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connected {
    /// The session the new one replaced (the same user's device's older connection): its
    /// connection must be closed. Another user's device of the same id is never replaced.
    pub(crate) replaced: Vec<Session>,
    /// The device's remembered heartbeat interval, if any.
    pub(crate) heartbeat_secs: Option<u32>,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Presence {
    /// The user.
    pub(crate) user: String,
    /// Their current sessions (online if any).
    pub(crate) sessions: Vec<Session>,
    /// When their last session ended, ms since the Unix epoch (None: never seen, or online
    /// since before any recorded end).
    pub(crate) last_seen_ms: Option<u64>,
}

/// The sessions layer over a store.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    store: Store,
}

type Row = (String, u64, String, String, u64);

fn session_from(user: &str, device: &str, key: &[u8], value: &[u8]) -> Result<Session, StoreError> {
    let (edge, conn, platform, transport, connected_at_ms): Row = decode(key, value, V1)?;
    Ok(Session {
        user: user.to_owned(),
        device: device.to_owned(),
        edge,
        conn,
        platform,
        transport,
        connected_at_ms,
    })
}

/// Reads the session of `(user, device)` inside a transaction (a conflicting read).
fn read_session(
    tx: &mut roam_store::Tx<'_>,
    user: &str,
    device: &str,
) -> Result<Option<Session>, TxError> {
    let key = keys::session(user, device);
    match tx.get(&key)? {
        Some(v) => Ok(Some(session_from(user, device, &key, &v)?)),
        None => Ok(None),
    }
}

/// Clears the rows of `s` and records the user's last-seen time.
fn clear_session(tx: &mut roam_store::Tx<'_>, s: &Session, now_ms: u64) -> Result<(), TxError> {
    tx.clear(&keys::session(&s.user, &s.device))?;
    tx.clear(&keys::edge_session(&s.edge, &s.user, &s.device))?;
    tx.set(&keys::presence(&s.user), &encode(V1, &(now_ms,)))?;
    Ok(())
}

impl Sessions {
    /// The layer over `store`.
    pub(crate) fn new(store: Store) -> Self {
        Sessions { store }
    }

    /// Brings the stored key layout to this build's (`sessions/keys.rs`): from layout 1 (no marker),
    /// clears the old device index, which named a device without its user. Idempotent; a
    /// store written by a newer layout is refused rather than misread.
    pub(crate) async fn upgrade(&self) -> Result<(), StoreError> {
        self.store
            .transact(|tx| {
                let key = keys::layout();
                let stored = match tx.get(&key)? {
                    Some(v) => decode::<(u64,)>(&key, &v, V1)?.0,
                    None => 1,
                };
                if stored > LAYOUT {
                    return Err(StoreError::corrupt(
                        &key,
                        format!(
                            "sessions key layout {stored} is newer than this build's ({LAYOUT})"
                        ),
                    )
                    .into());
                }
                if stored < LAYOUT {
                    let (begin, end) = keys::retired_device_index().range();
                    tx.clear_range(&begin, &end)?;
                    tx.set(&key, &encode(V1, &(LAYOUT,)))?;
                }
                Ok(())
            })
            .await
    }

    /// Records a new session, replacing the previous session of the same `(user, device)`.
    pub(crate) async fn connect(
        &self,
        new: NewSession<'_>,
        now_ms: u64,
    ) -> Result<Connected, StoreError> {
        let user = new.user.to_owned();
        let device = new.device.to_owned();
        let edge = new.edge.to_owned();
        let (conn, platform, transport) =
            (new.conn, new.platform.to_owned(), new.transport.to_owned());
        self.store
            .transact(move |tx| {
                let replaced: Vec<Session> =
                    read_session(tx, &user, &device)?.into_iter().collect();
                for old in &replaced {
                    clear_session(tx, old, now_ms)?;
                }
                let row = (
                    edge.as_str(),
                    conn,
                    platform.as_str(),
                    transport.as_str(),
                    now_ms,
                );
                tx.set(&keys::session(&user, &device), &encode(V1, &row))?;
                tx.set(
                    &keys::edge_session(&edge, &user, &device),
                    &encode(V1, &(conn,)),
                )?;
                let hb_key = keys::heartbeat(&user, &device);
                let heartbeat_secs = match tx.snapshot_get(&hb_key)? {
                    Some(v) => Some(decode::<(u32,)>(&hb_key, &v, V1)?.0),
                    None => None,
                };
                Ok(Connected {
                    replaced,
                    heartbeat_secs,
                })
            })
            .await
    }

    /// Ends the session of `(user, device)` if it is still the one on `(edge, conn)` (a newer
    /// connection may have replaced it). Returns whether it ended one.
    pub(crate) async fn disconnect(
        &self,
        user: &str,
        device: &str,
        edge: &str,
        conn: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (user, device, edge) = (user.to_owned(), device.to_owned(), edge.to_owned());
        self.store
            .transact(move |tx| match read_session(tx, &user, &device)? {
                Some(s) if s.edge == edge && s.conn == conn => {
                    clear_session(tx, &s, now_ms)?;
                    Ok(true)
                }
                _ => Ok(false),
            })
            .await
    }

    /// Ends every session on `edge` (it stopped heartbeating). Returns how many ended.
    pub(crate) async fn expire_edge(&self, edge: &str, now_ms: u64) -> Result<usize, StoreError> {
        const BATCH: usize = 500;
        let mut total = 0;
        loop {
            let edge = edge.to_owned();
            let ended = self
                .store
                .transact(move |tx| {
                    let space = keys::edge_sessions(&edge);
                    let rows = tx.get_range(&RangeOption::subspace(&space).limit(BATCH))?;
                    let mut ended = 0;
                    for kv in &rows {
                        let (user, device): (String, String) =
                            space.unpack(&kv.key).map_err(|e| {
                                StoreError::corrupt(&kv.key, format!("malformed session key: {e}"))
                            })?;
                        match read_session(tx, &user, &device)? {
                            Some(s) if s.edge == edge => clear_session(tx, &s, now_ms)?,
                            // A stale index row: the session moved elsewhere.
                            _ => tx.clear(&kv.key)?,
                        }
                        ended += 1;
                    }
                    Ok(ended)
                })
                .await?;
            total += ended;
            if ended < BATCH {
                return Ok(total);
            }
        }
    }

    /// The current sessions of each user (snapshot reads: routing may be a moment stale).
    pub(crate) async fn sessions_of_users(
        &self,
        users: &[String],
    ) -> Result<Vec<Session>, StoreError> {
        let users = users.to_vec();
        self.store
            .transact(move |tx| {
                let mut out = Vec::new();
                for user in &users {
                    out.extend(user_sessions(tx, user)?);
                }
                Ok(out)
            })
            .await
    }

    /// The current session of each device that has one (snapshot reads).
    pub(crate) async fn sessions_of_devices(
        &self,
        devices: &[UserDevice],
    ) -> Result<Vec<Session>, StoreError> {
        let devices = devices.to_vec();
        self.store
            .transact(move |tx| {
                let mut out = Vec::new();
                for d in &devices {
                    let key = keys::session(&d.user, &d.device);
                    if let Some(v) = tx.snapshot_get(&key)? {
                        out.push(session_from(&d.user, &d.device, &key, &v)?);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Presence of each user.
    pub(crate) async fn presence(&self, users: &[String]) -> Result<Vec<Presence>, StoreError> {
        let users = users.to_vec();
        self.store
            .transact(move |tx| {
                let mut out = Vec::new();
                for user in &users {
                    let sessions = user_sessions(tx, user)?;
                    let key = keys::presence(user);
                    let last_seen_ms = match tx.snapshot_get(&key)? {
                        Some(v) => Some(decode::<(u64,)>(&key, &v, V1)?.0),
                        None => None,
                    };
                    out.push(Presence {
                        user: user.clone(),
                        sessions,
                        last_seen_ms,
                    });
                }
                Ok(out)
            })
            .await
    }

    /// Remembers a device's heartbeat interval.
    pub(crate) async fn set_heartbeat(
        &self,
        user: &str,
        device: &str,
        secs: u32,
    ) -> Result<(), StoreError> {
        let key = keys::heartbeat(user, device);
        self.store
            .transact(move |tx| {
                tx.set(&key, &encode(V1, &(secs,)))?;
                Ok(())
            })
            .await
    }
}

fn user_sessions(tx: &mut roam_store::Tx<'_>, user: &str) -> Result<Vec<Session>, TxError> {
    let space = keys::user_sessions(user);
    let mut out = Vec::new();
    for kv in tx.snapshot_get_range(&RangeOption::subspace(&space))? {
        let (device,): (String,) = space
            .unpack(&kv.key)
            .map_err(|e| StoreError::corrupt(&kv.key, format!("malformed session key: {e}")))?;
        out.push(session_from(user, &device, &kv.key, &kv.value)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
