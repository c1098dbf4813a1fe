//! Snowflake and Sonyflake: time-based IDs from a leased worker id.
//!
//! - [`layout`]: the bit layouts (encode, decode).
//! - [`core`]: the sans-IO decisions (sequence, clock rollback, reservation).
//! - [`lease`]: worker-id leases in the store (claim, renew, release).
//! - [`FlakeGenerator`] (here): the async glue. A request locks the core for one `poll` at a
//!   time (never across an await), then waits on the clock, renews the reservation, or
//!   returns IDs; the service's heartbeat calls [`FlakeGenerator::heartbeat`].

pub(crate) mod core;
pub(crate) mod layout;
pub(crate) mod lease;

use self::core::{Fault, FlakeCore, Poll};
use crate::{Clock, IdError, IdMetrics, IdsConfig, metrics::GeneratorLabel};
use layout::{Generator, Layout};
use lease::{LeaseSpec, RenewError};
use parking_lot::Mutex;
use roam_store::Store;
use serde::Serialize;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// A time-based generator's state, for the monitoring endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlakeState {
    /// `snowflake` or `sonyflake`.
    pub generator: Generator,
    /// The leased worker (machine) id.
    pub worker: u32,
    /// This process's lease owner id.
    pub owner: String,
    /// When the lease expires unless renewed (ms since the Unix epoch).
    pub lease_expires_at_ms: u64,
    /// IDs may be issued with timestamps up to here (persisted).
    pub reserved_until_ms: u64,
    /// Start of the tick of the last ID issued (or of the predecessor's floor).
    pub last_issued_ms: u64,
    /// `ok`, or why nothing is issued (`lease lost`, `shutting down`).
    pub status: String,
}

/// One time-based generator holding one worker lease.
#[derive(Debug)]
pub(crate) struct FlakeGenerator {
    layout: Layout,
    label: GeneratorLabel,
    spec: LeaseSpec,
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: IdMetrics,
    max_backward_ms: u64,
    timeout: Duration,
    max_count: u32,
    core: Mutex<FlakeCore>,
    expires_at_ms: AtomicU64,
    /// Serializes every lease transaction of this generator (renewals, re-claims, release).
    lease_lock: tokio::sync::Mutex<()>,
    released: AtomicBool,
}

impl FlakeGenerator {
    /// Claims a worker lease for `generator` as `owner` and starts issuing after the
    /// previous holder's reservation.
    pub(crate) async fn start(
        generator: Generator,
        store: Store,
        config: &IdsConfig,
        clock: Arc<dyn Clock>,
        metrics: IdMetrics,
        owner: Arc<str>,
    ) -> Result<Self, IdError> {
        let epoch = match generator {
            Generator::Snowflake => config.snowflake_epoch_ms,
            Generator::Sonyflake => config.sonyflake_epoch_ms,
        };
        let layout = Layout::of(generator, epoch);
        let spec = LeaseSpec {
            generator,
            owner,
            ttl_ms: config.lease_ttl_ms,
            reserve_ahead_ms: config.reserve_ahead_ms,
            limit: config.max_workers.min(layout.max_worker() + 1),
        };
        let timeout = Duration::from_millis(config.load_timeout_ms);
        let claim = lease::claim(&store, &spec, clock.now_ms());
        let claimed = tokio::time::timeout(timeout, claim).await.map_err(|_| {
            IdError::Unavailable(format!(
                "{}: the store did not answer the lease claim within {} ms",
                generator.name(),
                config.load_timeout_ms
            ))
        })??;
        let core = FlakeCore::new(
            layout,
            claimed.worker,
            config.max_backward_ms,
            claimed.floor_ms,
            claimed.record.reserved_until_ms,
        );
        Ok(Self {
            layout,
            label: GeneratorLabel {
                generator: generator.name(),
            },
            spec,
            store,
            clock,
            metrics,
            max_backward_ms: config.max_backward_ms,
            timeout,
            max_count: config.max_count,
            core: Mutex::new(core),
            expires_at_ms: AtomicU64::new(claimed.record.expires_at_ms),
            lease_lock: tokio::sync::Mutex::new(()),
            released: AtomicBool::new(false),
        })
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// One ID.
    pub(crate) async fn next_id(&self) -> Result<u64, IdError> {
        let mut id = None;
        self.issue(1, |v| id = Some(v)).await?;
        id.ok_or_else(|| IdError::Unavailable("no ID was issued".into()))
    }

    /// `count` IDs (1 to `max_count`), increasing.
    pub(crate) async fn next_ids(&self, count: u32) -> Result<Vec<u64>, IdError> {
        if count == 0 || count > self.max_count {
            return Err(IdError::invalid(format!(
                "count {count}: must be 1 to {}",
                self.max_count
            )));
        }
        let mut ids = Vec::with_capacity(count as usize);
        self.issue(count, |v| ids.push(v)).await?;
        Ok(ids)
    }

    /// Issues `want` IDs into `sink`; waits (each wait short, the whole bounded by the load
    /// timeout) for sequence rollovers, small clock steps back and reservations.
    async fn issue(&self, want: u32, mut sink: impl FnMut(u64)) -> Result<(), IdError> {
        let mut left = want;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let poll = {
                let mut core = self.core.lock();
                let poll = core.poll(self.clock.now_ms(), left);
                if let Poll::Issued { tick, seq, count } = poll {
                    let worker = core.worker();
                    for s in seq..seq + count {
                        sink(self.layout.encode(tick, worker, s));
                    }
                }
                poll
            };
            match poll {
                Poll::Issued { count, .. } => {
                    self.metrics
                        .flake_issued
                        .get_or_create(&self.label)
                        .inc_by(u64::from(count));
                    left -= count;
                    if left == 0 {
                        return Ok(());
                    }
                    continue;
                }
                Poll::Wait { until_ms, rollback } => {
                    if rollback {
                        self.metrics
                            .clock_rollback_waits
                            .get_or_create(&self.label)
                            .inc();
                        tracing::debug!(
                            generator = self.label.generator,
                            until_ms,
                            "clock behind: waiting"
                        );
                    }
                    self.clock.sleep_until_ms(until_ms).await;
                }
                Poll::Reserve => self.reserve().await?,
                Poll::Fail(fault) => return Err(self.fault(fault)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(IdError::Unavailable(format!(
                    "{}: could not issue within {} ms",
                    self.label.generator,
                    self.timeout.as_millis()
                )));
            }
        }
    }

    fn fault(&self, fault: Fault) -> IdError {
        let generator = self.label.generator;
        match fault {
            Fault::Behind { behind_ms } => {
                self.metrics
                    .clock_rollback_errors
                    .get_or_create(&self.label)
                    .inc();
                tracing::warn!(
                    generator,
                    behind_ms,
                    "clock behind the last issued time: refusing"
                );
                IdError::ClockMovedBackwards {
                    generator,
                    behind_ms,
                    tolerance_ms: self.max_backward_ms,
                }
            }
            Fault::BeforeEpoch { now_ms } => IdError::Unavailable(format!(
                "{generator}: the clock reads {now_ms} ms, before the layout's epoch"
            )),
            Fault::PastEnd => IdError::Exhausted(format!(
                "{generator}: the time field is used up for this epoch"
            )),
            Fault::Stopped(reason) => IdError::Unavailable(format!("{generator}: {reason}")),
        }
    }

    /// A request reached the end of the reservation: extend it now (one renewal for every
    /// request waiting on it).
    async fn reserve(&self) -> Result<(), IdError> {
        let _lease = self.lease_lock.lock().await;
        let covered = {
            let core = self.core.lock();
            core.reserved_until_ms() >= self.clock.now_ms() && !core.is_stopped()
        };
        if covered {
            return Ok(());
        }
        self.renew().await
    }

    /// Renews the lease and reservation; the caller holds `lease_lock`.
    async fn renew(&self) -> Result<(), IdError> {
        let worker = self.core.lock().worker();
        let now = self.clock.now_ms();
        let renewal = lease::renew(&self.store, &self.spec, worker, now);
        let result = match tokio::time::timeout(self.timeout, renewal).await {
            Ok(r) => r,
            Err(_) => Err(RenewError::Store(roam_store::StoreError::Aborted(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            )))),
        };
        match result {
            Ok(record) => {
                self.core.lock().handle_reserved(record.reserved_until_ms);
                self.expires_at_ms
                    .store(record.expires_at_ms, Ordering::Relaxed);
                Ok(())
            }
            Err(RenewError::Lost) => {
                self.core.lock().stop("worker lease lost");
                tracing::error!(
                    generator = self.label.generator,
                    worker,
                    "worker lease lost"
                );
                Err(IdError::Unavailable(format!(
                    "{}: worker lease {worker} lost",
                    self.label.generator
                )))
            }
            Err(RenewError::Store(e)) => {
                self.metrics
                    .lease_renewal_failures
                    .get_or_create(&self.label)
                    .inc();
                tracing::warn!(generator = self.label.generator, error = %e, "lease renewal failed");
                Err(IdError::Unavailable(format!(
                    "{}: cannot persist a timestamp reservation: {e}",
                    self.label.generator
                )))
            }
        }
    }

    /// The heartbeat: renew the lease, or claim a new worker id if it was lost.
    pub(crate) async fn heartbeat(&self) {
        let _lease = self.lease_lock.lock().await;
        if self.released.load(Ordering::Relaxed) {
            return;
        }
        let lost = self.core.lock().is_stopped();
        if !lost && self.renew().await.is_ok() {
            return;
        }
        if !self.core.lock().is_stopped() {
            return; // a store failure: keep issuing inside the reservation, retry next beat
        }
        let claim = lease::claim(&self.store, &self.spec, self.clock.now_ms());
        match tokio::time::timeout(self.timeout, claim).await {
            Ok(Ok(c)) => {
                self.core
                    .lock()
                    .reset(c.worker, c.floor_ms, c.record.reserved_until_ms);
                self.expires_at_ms
                    .store(c.record.expires_at_ms, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::warn!(generator = self.label.generator, error = %e, "re-claiming a worker lease failed");
            }
            Err(_) => {
                tracing::warn!(
                    generator = self.label.generator,
                    "re-claiming a worker lease timed out"
                );
            }
        }
    }

    /// Stops issuing and frees the lease, leaving the last issued time as the next holder's
    /// floor.
    pub(crate) async fn release(&self) {
        let _lease = self.lease_lock.lock().await;
        if self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        let (worker, last, was_lost) = {
            let mut core = self.core.lock();
            let was_lost = core.is_stopped();
            core.stop("the ID service is shutting down");
            (core.worker(), core.last_issued_ms(), was_lost)
        };
        if was_lost {
            return;
        }
        let release = lease::release(&self.store, &self.spec, worker, last);
        match tokio::time::timeout(self.timeout, release).await {
            Ok(Ok(())) => {
                tracing::info!(
                    generator = self.label.generator,
                    worker,
                    "worker lease released"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(generator = self.label.generator, error = %e, "lease release failed; it expires on its own");
            }
            Err(_) => {
                tracing::warn!(
                    generator = self.label.generator,
                    "lease release timed out; it expires on its own"
                );
            }
        }
    }

    pub(crate) fn state(&self) -> FlakeState {
        let core = self.core.lock();
        let status = if self.released.load(Ordering::Relaxed) {
            "shutting down"
        } else if core.is_stopped() {
            "lease lost"
        } else {
            "ok"
        };
        FlakeState {
            generator: self.layout.generator(),
            worker: core.worker(),
            owner: self.spec.owner.to_string(),
            lease_expires_at_ms: self.expires_at_ms.load(Ordering::Relaxed),
            reserved_until_ms: core.reserved_until_ms(),
            last_issued_ms: core.last_issued_ms(),
            status: status.to_owned(),
        }
    }
}
