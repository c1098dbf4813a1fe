//! [`IdService`]: the segment allocator and both time-based generators of one process, their
//! worker-lease heartbeat, and the validation every front end (in-process, gRPC, HTTP)
//! shares.

use crate::{
    Clock, IdError, IdMetrics, IdsConfig, SystemClock,
    flake::{
        FlakeGenerator, FlakeState,
        layout::{Decoded, Generator},
    },
    segment::{SegmentAllocator, TagHandle, TagState},
};
use parking_lot::Mutex;
use roam_store::Store;
use serde::Serialize;
use std::{sync::Arc, time::Duration};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

/// Everything the monitoring endpoint shows.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    /// Per-tag buffers (Leaf's cache page), by tag name.
    pub tags: Vec<TagState>,
    /// The Snowflake generator and its lease.
    pub snowflake: FlakeState,
    /// The Sonyflake generator and its lease.
    pub sonyflake: FlakeState,
    /// The largest `count` a request may ask for.
    pub max_count: u32,
}

/// The ID service of one process.
///
/// Start it with [`IdService::start`] inside a tokio runtime; stop it with
/// [`IdService::shutdown`] (releases the worker leases). Dropping it without `shutdown`
/// stops the heartbeat but leaves the leases to expire, as a crash would.
#[derive(Debug)]
pub struct IdService {
    config: IdsConfig,
    segments: SegmentAllocator,
    snowflake: Arc<FlakeGenerator>,
    sonyflake: Arc<FlakeGenerator>,
    shutdown: CancellationToken,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    _stop_on_drop: DropGuard,
}

impl IdService {
    /// Starts the service on `store` with the system clock: claims a Snowflake and a
    /// Sonyflake worker lease and starts their heartbeat.
    pub async fn start(
        store: Store,
        config: IdsConfig,
        metrics: IdMetrics,
    ) -> Result<Arc<Self>, IdError> {
        Self::start_with_clock(store, config, metrics, Arc::new(SystemClock)).await
    }

    /// [`start`](Self::start) with an explicit clock (tests, simulations).
    pub async fn start_with_clock(
        store: Store,
        config: IdsConfig,
        metrics: IdMetrics,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, IdError> {
        config.validate()?;
        let segments = SegmentAllocator::new(
            store.clone(),
            config.clone(),
            clock.clone(),
            metrics.clone(),
        )?;
        let owner: Arc<str> = Arc::from(format!(
            "pid{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let start = |generator| {
            FlakeGenerator::start(
                generator,
                store.clone(),
                &config,
                clock.clone(),
                metrics.clone(),
                owner.clone(),
            )
        };
        let snowflake = Arc::new(start(Generator::Snowflake).await?);
        let sonyflake = match start(Generator::Sonyflake).await {
            Ok(g) => Arc::new(g),
            Err(e) => {
                snowflake.release().await;
                return Err(e);
            }
        };
        let shutdown = CancellationToken::new();
        let interval = Duration::from_millis(config.heartbeat_interval_ms);
        let heartbeat = tokio::spawn(
            heartbeat(
                [snowflake.clone(), sonyflake.clone()],
                interval,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("ids_heartbeat", owner = %owner)),
        );
        tracing::info!(
            owner = %owner,
            snowflake_worker = snowflake.state().worker,
            sonyflake_machine = sonyflake.state().worker,
            "ID service started"
        );
        Ok(Arc::new(Self {
            config,
            segments,
            snowflake,
            sonyflake,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            heartbeat: Mutex::new(Some(heartbeat)),
        }))
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &IdsConfig {
        &self.config
    }

    /// The segment allocator.
    pub fn segments(&self) -> &SegmentAllocator {
        &self.segments
    }

    /// Creates a segment tag (see [`SegmentAllocator::create_tag`]).
    pub async fn create_tag(&self, tag: &str, step: u64, start: u64) -> Result<(), IdError> {
        self.segments.create_tag(tag, step, start).await
    }

    /// The handle of a tag, for callers that issue many IDs of it (skips the name lookup).
    pub async fn tag(&self, tag: &str) -> Result<TagHandle, IdError> {
        self.segments.tag(tag).await
    }

    /// `count` segment IDs of `tag` (1 to `max_count`).
    pub async fn next_ids(&self, tag: &str, count: u32) -> Result<Vec<u64>, IdError> {
        self.segments.next_ids(tag, count).await
    }

    /// `count` IDs of a time-based generator (1 to `max_count`).
    pub async fn flake_ids(&self, generator: Generator, count: u32) -> Result<Vec<u64>, IdError> {
        self.generator(generator).next_ids(count).await
    }

    /// One Snowflake ID.
    pub async fn next_snowflake(&self) -> Result<u64, IdError> {
        self.snowflake.next_id().await
    }

    /// One Sonyflake ID.
    pub async fn next_sonyflake(&self) -> Result<u64, IdError> {
        self.sonyflake.next_id().await
    }

    /// Takes a time-based ID apart (with this service's epoch).
    pub fn decode(&self, generator: Generator, id: u64) -> Result<Decoded, IdError> {
        self.generator(generator).layout().decode(id)
    }

    /// The monitoring view.
    pub fn state(&self) -> ServiceState {
        ServiceState {
            tags: self.segments.state(),
            snowflake: self.snowflake.state(),
            sonyflake: self.sonyflake.state(),
            max_count: self.config.max_count,
        }
    }

    /// Stops the heartbeat, waits for segment loads in flight, and releases both worker
    /// leases (leaving the last issued time as the next holder's floor). Time-based
    /// requests fail from then on; buffered segment IDs are still served. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let heartbeat = self.heartbeat.lock().take();
        if let Some(task) = heartbeat
            && let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!("the ID service heartbeat panicked");
        }
        self.segments.shutdown().await;
        self.snowflake.release().await;
        self.sonyflake.release().await;
    }

    fn generator(&self, generator: Generator) -> &FlakeGenerator {
        match generator {
            Generator::Snowflake => &self.snowflake,
            Generator::Sonyflake => &self.sonyflake,
        }
    }
}

/// Renews both leases every `interval` until `stop`.
async fn heartbeat(
    generators: [Arc<FlakeGenerator>; 2],
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; the leases were just claimed
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {
                for g in &generators {
                    g.heartbeat().await;
                }
            }
        }
    }
}
