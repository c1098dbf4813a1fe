//! Worker-id leases in the store: claim, renew, release. Each is one transaction with `now`
//! passed in; the layout is in [`crate::keys`].
//!
//! - **claim** picks a worker id nobody holds: an expired lease whose reservation is already
//!   in the past (reused at once), else an id never leased, else the expired lease with the
//!   oldest reservation (the generator waits out or refuses the remaining distance). It reads
//!   the lease range with a snapshot read and the chosen key with a plain read, so two
//!   processes claiming at once conflict only if they pick the same id, and then one retries.
//!   The lease it writes expires after `ttl` and reserves timestamps up to `now + ahead`.
//! - **renew** (the heartbeat, or a request that reached the end of its reservation) extends
//!   both, only if the caller still owns the lease; otherwise it reports the lease lost.
//! - **release** (graceful shutdown) frees the lease at once and lowers the reservation to
//!   the last timestamp actually issued, so the next holder need not wait.

use crate::{
    IdError,
    flake::layout::Generator,
    keys::{self, LeaseRecord},
};
use roam_store::{RangeOption, Store, StoreError};
use std::sync::Arc;

/// What a process claims leases as.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSpec {
    pub(crate) generator: Generator,
    /// This process instance (unique per start).
    pub(crate) owner: Arc<str>,
    pub(crate) ttl_ms: u64,
    pub(crate) reserve_ahead_ms: u64,
    /// Worker ids `0..limit` may be claimed.
    pub(crate) limit: u32,
}

impl LeaseSpec {
    fn record(&self, now_ms: u64, floor_ms: u64) -> LeaseRecord {
        LeaseRecord {
            owner: self.owner.to_string(),
            expires_at_ms: now_ms.saturating_add(self.ttl_ms),
            reserved_until_ms: floor_ms.max(now_ms.saturating_add(self.reserve_ahead_ms)),
        }
    }
}

/// A lease just claimed.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) worker: u32,
    /// The previous holder's reservation: issue only after it (0: never leased).
    pub(crate) floor_ms: u64,
    pub(crate) record: LeaseRecord,
}

/// Why a renewal did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RenewError {
    /// Someone else holds the lease now (it expired and was claimed), or it was released.
    #[error("the worker lease was lost to another process")]
    Lost,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Claims a free worker id.
pub(crate) async fn claim(
    store: &Store,
    spec: &LeaseSpec,
    now_ms: u64,
) -> Result<Claimed, IdError> {
    let spec_in = spec.clone();
    let claimed = store
        .transact(move |tx| {
            let spec = &spec_in;
            let prefix = keys::leases(spec.generator.name());
            let mut held = Vec::new();
            for kv in tx.snapshot_get_range(&RangeOption::prefix(&prefix))? {
                let worker = keys::lease_worker(&kv.key)?;
                if worker < spec.limit {
                    held.push((worker, keys::decode_lease(&kv.key, &kv.value)?));
                }
            }
            let Some(worker) = choose(&held, spec.limit, now_ms) else {
                return Ok(None);
            };
            // The plain read makes a concurrent claim of the same id conflict.
            let key = keys::lease(spec.generator.name(), worker);
            let floor_ms = match tx.get(&key)? {
                Some(v) => keys::decode_lease(&key, &v)?.reserved_until_ms,
                None => 0,
            };
            let record = spec.record(now_ms, floor_ms);
            tx.set(&key, &keys::encode_lease(&record))?;
            Ok(Some(Claimed {
                worker,
                floor_ms,
                record,
            }))
        })
        .await?;
    let claimed = claimed.ok_or(IdError::NoFreeWorker {
        generator: spec.generator.name(),
        limit: spec.limit,
    })?;
    tracing::info!(
        generator = spec.generator.name(),
        worker = claimed.worker,
        floor_ms = claimed.floor_ms,
        "worker lease claimed"
    );
    Ok(claimed)
}

/// The worker id to claim among `held` (sorted by worker, all below `limit`).
fn choose(held: &[(u32, LeaseRecord)], limit: u32, now_ms: u64) -> Option<u32> {
    let expired = |r: &LeaseRecord| r.expires_at_ms <= now_ms;
    if let Some((w, _)) = held
        .iter()
        .find(|(_, r)| expired(r) && r.reserved_until_ms < now_ms)
    {
        return Some(*w);
    }
    // The lowest id without a record: the first gap in the sorted ids.
    let mut expect = 0u32;
    for (w, _) in held {
        if *w != expect {
            break;
        }
        expect += 1;
    }
    if expect < limit {
        return Some(expect);
    }
    held.iter()
        .filter(|(_, r)| expired(r))
        .min_by_key(|(_, r)| r.reserved_until_ms)
        .map(|(w, _)| *w)
}

/// Extends a lease this process holds.
pub(crate) async fn renew(
    store: &Store,
    spec: &LeaseSpec,
    worker: u32,
    now_ms: u64,
) -> Result<LeaseRecord, RenewError> {
    let spec_in = spec.clone();
    let renewed = store
        .transact(move |tx| {
            let key = keys::lease(spec_in.generator.name(), worker);
            let Some(v) = tx.get(&key)? else {
                return Ok(None);
            };
            let current = keys::decode_lease(&key, &v)?;
            if current.owner != *spec_in.owner {
                return Ok(None);
            }
            let record = spec_in.record(now_ms, current.reserved_until_ms);
            tx.set(&key, &keys::encode_lease(&record))?;
            Ok(Some(record))
        })
        .await?;
    renewed.ok_or(RenewError::Lost)
}

/// Frees a lease this process holds, leaving `last_issued_ms` as the next holder's floor.
pub(crate) async fn release(
    store: &Store,
    spec: &LeaseSpec,
    worker: u32,
    last_issued_ms: u64,
) -> Result<(), RenewError> {
    let spec_in = spec.clone();
    let released = store
        .transact(move |tx| {
            let key = keys::lease(spec_in.generator.name(), worker);
            let Some(v) = tx.get(&key)? else {
                return Ok(false);
            };
            if keys::decode_lease(&key, &v)?.owner != *spec_in.owner {
                return Ok(false);
            }
            let record = LeaseRecord {
                owner: String::new(),
                expires_at_ms: 0,
                reserved_until_ms: last_issued_ms,
            };
            tx.set(&key, &keys::encode_lease(&record))?;
            Ok(true)
        })
        .await?;
    if released {
        Ok(())
    } else {
        Err(RenewError::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires: u64, reserved: u64) -> LeaseRecord {
        LeaseRecord {
            owner: "x".into(),
            expires_at_ms: expires,
            reserved_until_ms: reserved,
        }
    }

    #[test]
    fn choose_prefers_reusable_then_unused_then_oldest_expired() {
        let now = 1_000;
        // 0 live, 1 expired with its reservation past, 3 unused gap at 2.
        let held = [
            (0, lease(2_000, 1_500)),
            (1, lease(900, 950)),
            (3, lease(2_000, 1_500)),
        ];
        assert_eq!(choose(&held, 4, now), Some(1), "reuse an expired lease");
        let held = [(0, lease(2_000, 1_500)), (1, lease(2_000, 1_500))];
        assert_eq!(choose(&held, 4, now), Some(2), "else a never-used id");
        assert_eq!(choose(&held, 2, now), None, "every id live");
        // Expired, but reserved into the future (a skewed clock): the oldest reservation.
        let held = [(0, lease(900, 5_000)), (1, lease(900, 3_000))];
        assert_eq!(choose(&held, 2, now), Some(1));
        assert_eq!(choose(&[], 1, now), Some(0));
    }
}
