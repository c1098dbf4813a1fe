//! The segment-step allocator: Meituan Leaf's segment mode with its double buffer and
//! dynamic step, over the store.
//!
//! Each business tag has a record `(max_id, step)` in the store; taking a *segment* is one
//! transaction handing this process `[max_id, max_id + step)`. IDs are then served from
//! memory:
//!
//! - the **fast path** (`cell::Hot::take`) is one `fetch_add` on the tag's counter plus
//!   three loads: no lock, no allocation, no store access;
//! - when a request takes the ID at `prefetch_percent` of the current segment, the next
//!   segment is loaded by a background task, so in steady state a request never waits for
//!   the store;
//! - when the current segment runs out, the **slow path** (under the tag's mutex) switches
//!   to the loaded one, or waits (bounded by `load_timeout_ms`) for the load in flight, or
//!   starts one; with both buffers empty and the store failing it answers
//!   [`IdError::Unavailable`] — never an ID it does not own.
//!
//! The step of each load follows `policy::StepPolicy` and is persisted with the tag. IDs
//! are below 2^53 (exact in JSON and JavaScript), from 1 up, increasing within one process
//! (across processes sharing a tag, each holds its own segments).

mod cell;
mod policy;
mod store;

pub use policy::Segment;

use crate::{Clock, IdError, IdMetrics, IdsConfig, metrics::TagLabel};
use cell::Hot;
use parking_lot::{Mutex, RwLock};
use policy::{StepPolicy, TagBuffers};
use roam_store::Store;
use serde::Serialize;
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// Segment IDs stay below this (2^53): exact as JSON numbers and JavaScript doubles.
pub const MAX_SEGMENT_ID: u64 = 1 << 53;

/// Longest tag name, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// Tag names the HTTP routes use for something else.
const RESERVED_TAGS: &[&str] = &["snowflake", "sonyflake", "tags"];

/// The first ID of a tag created with `start`: ID 0 is never issued, so 0 counts as 1.
pub(crate) fn first_id(start: u64) -> u64 {
    start.max(1)
}

/// Checks a tag name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `_` or `.`, and not one
/// of the generator names.
pub fn validate_tag(tag: &str) -> Result<(), IdError> {
    let ok_chars = tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !ok_chars {
        return Err(IdError::invalid(format!(
            "tag {tag:?}: must be 1 to {MAX_TAG_LEN} characters of A-Z a-z 0-9 _ . -"
        )));
    }
    if tag.starts_with(['_', '.']) || RESERVED_TAGS.contains(&tag) {
        return Err(IdError::invalid(format!(
            "tag {tag:?} is reserved (names starting with _ or ., and {RESERVED_TAGS:?})"
        )));
    }
    Ok(())
}

/// What the allocator shares with its tags and background loads.
#[derive(Debug)]
struct Ctx {
    store: Store,
    clock: Arc<dyn Clock>,
    config: IdsConfig,
    metrics: IdMetrics,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Ctx {
    fn check_count(&self, count: u32) -> Result<u64, IdError> {
        if count == 0 || count > self.config.max_count {
            return Err(IdError::invalid(format!(
                "count {count}: must be 1 to {}",
                self.config.max_count
            )));
        }
        Ok(u64::from(count))
    }
}

/// One tag: the hot cell, the double buffer behind its mutex, and the waiters of its loads.
#[derive(Debug)]
pub(crate) struct TagCell {
    hot: Hot,
    name: Arc<str>,
    buffers: Mutex<TagBuffers>,
    loaded: Notify,
}

impl TagCell {
    pub(crate) fn label(&self) -> TagLabel {
        TagLabel {
            tag: self.name.to_string(),
        }
    }

    /// Switches to the next segment if the current one is used up and one is loaded.
    fn switch_if_exhausted(&self, b: &mut TagBuffers, prefetch_percent: u8) -> bool {
        if !self.hot.exhausted() {
            return false;
        }
        let (used, _) = self.hot.used_and_remaining();
        match b.take_next(used) {
            Some(next) => {
                self.hot.publish(next, prefetch_percent);
                true
            }
            None => false,
        }
    }

    /// The monitoring view of this tag.
    pub(crate) fn state(&self) -> TagState {
        let b = self.buffers.lock();
        let (used, remaining) = self.hot.used_and_remaining();
        TagState {
            tag: self.name.to_string(),
            base_step: b.base_step(),
            step: b.step,
            current: b.current,
            cursor: self.hot.cursor(),
            remaining,
            next: b.next,
            next_ready: b.next.is_some(),
            loading: b.loading,
            issued: b.issued_before.saturating_add(used),
            loaded_at_ms: b.loaded_at_ms,
            last_error: b.last_error.clone(),
        }
    }
}

/// A tag's buffer state, as the monitoring endpoint shows it (Leaf's cache page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagState {
    /// The tag.
    pub tag: String,
    /// The step it was created with (the dynamic step's floor).
    pub base_step: u64,
    /// The step of the last segment taken.
    pub step: u64,
    /// The current segment, as taken from the store.
    pub current: Segment,
    /// The next ID the current segment hands out (its end when used up).
    pub cursor: u64,
    /// IDs left in the current segment (the next one not counted).
    pub remaining: u64,
    /// The segment loaded ahead, if any.
    pub next: Option<Segment>,
    /// Whether a next segment is loaded.
    pub next_ready: bool,
    /// Whether a load is in flight.
    pub loading: bool,
    /// IDs handed out by this process since it loaded the tag.
    pub issued: u64,
    /// When the last segment was taken (ms since the Unix epoch).
    pub loaded_at_ms: u64,
    /// Why the last load failed, until one succeeds.
    pub last_error: Option<String>,
}

/// The segment allocator of one process: the tags it has loaded and their buffers.
///
/// Cheap to share behind an `Arc`; [`tag`](Self::tag) gives a [`TagHandle`] for the hot path.
#[derive(Debug)]
pub struct SegmentAllocator {
    ctx: Arc<Ctx>,
    tags: RwLock<HashMap<Arc<str>, Arc<TagCell>>>,
}

impl SegmentAllocator {
    /// An allocator over `store`. Background loads run on the current tokio runtime, so this
    /// must be called inside one.
    pub fn new(
        store: Store,
        config: IdsConfig,
        clock: Arc<dyn Clock>,
        metrics: IdMetrics,
    ) -> Result<Self, IdError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            IdError::Config("the segment allocator must be created inside a tokio runtime".into())
        })?;
        Ok(Self {
            ctx: Arc::new(Ctx {
                store,
                clock,
                config,
                metrics,
                runtime,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
            tags: RwLock::default(),
        })
    }

    /// Creates a tag whose IDs start at `start` (0 counts as 1: ID 0 is never issued) and
    /// whose segments hold `step` IDs (the dynamic step's floor).
    pub async fn create_tag(&self, tag: &str, step: u64, start: u64) -> Result<(), IdError> {
        validate_tag(tag)?;
        let start = first_id(start);
        let max_step = self.ctx.config.max_step;
        if step == 0 || step > max_step {
            return Err(IdError::invalid(format!(
                "step {step}: must be 1 to {max_step} (ids.max_step)"
            )));
        }
        if start.saturating_add(step) > MAX_SEGMENT_ID {
            return Err(IdError::invalid(format!(
                "start {start}: segment IDs stay below 2^53"
            )));
        }
        let now = self.ctx.clock.now_ms();
        store::create_tag(&self.ctx.store, tag, step, start, now).await?;
        tracing::info!(tag, step, start, "tag created");
        Ok(())
    }

    /// The handle of `tag`, loading its first segment if this process has not yet
    /// ([`IdError::UnknownTag`] if it was never created). Hold it to skip the name lookup.
    pub async fn tag(&self, tag: &str) -> Result<TagHandle, IdError> {
        if let Some(cell) = self.cached(tag) {
            return Ok(self.handle(cell));
        }
        validate_tag(tag)?;
        let name: Arc<str> = Arc::from(tag);
        let now = self.ctx.clock.now_ms();
        let first = load_bounded(&self.ctx, name.clone(), None, now).await?;
        self.ctx
            .metrics
            .segment_loads
            .get_or_create(&label(&name))
            .inc();
        // Two requests may load a tag's first segment at once: the one inserted first wins
        // and the other segment is dropped (a gap, never a duplicate).
        let cell = {
            let mut tags = self.tags.write();
            tags.entry(name.clone())
                .or_insert_with(|| {
                    let cell = Arc::new(self.new_cell(name, first, now));
                    self.ctx.metrics.track(&cell);
                    cell
                })
                .clone()
        };
        Ok(self.handle(cell))
    }

    /// `count` IDs of `tag` (1 to `max_count`), increasing.
    pub async fn next_ids(&self, tag: &str, count: u32) -> Result<Vec<u64>, IdError> {
        self.ctx.check_count(count)?;
        self.tag(tag).await?.next_ids(count).await
    }

    /// The buffer state of every tag this process has loaded, by tag name.
    pub fn state(&self) -> Vec<TagState> {
        let cells: Vec<Arc<TagCell>> = self.tags.read().values().cloned().collect();
        let mut states: Vec<TagState> = cells.iter().map(|c| c.state()).collect();
        states.sort_by(|a, b| a.tag.cmp(&b.tag));
        states
    }

    /// Stops starting loads and waits for those in flight (each bounded by
    /// `load_timeout_ms`). IDs already buffered are still served.
    pub async fn shutdown(&self) {
        self.ctx.shutdown.cancel();
        self.ctx.tasks.close();
        self.ctx.tasks.wait().await;
    }

    fn cached(&self, tag: &str) -> Option<Arc<TagCell>> {
        self.tags.read().get(tag).cloned()
    }

    fn handle(&self, cell: Arc<TagCell>) -> TagHandle {
        TagHandle {
            cell,
            ctx: self.ctx.clone(),
        }
    }

    fn new_cell(&self, name: Arc<str>, first: store::Taken, now_ms: u64) -> TagCell {
        let config = &self.ctx.config;
        let policy = StepPolicy {
            base_step: first.base_step,
            max_step: config.max_step,
            grow_below_ms: config.step_grow_below_ms,
            shrink_above_ms: config.step_shrink_above_ms,
        };
        let cell = TagCell {
            hot: Hot::default(),
            name,
            buffers: Mutex::new(TagBuffers::new(
                policy,
                config.load_retry_ms,
                first.segment,
                first.step,
                now_ms,
            )),
            loaded: Notify::new(),
        };
        cell.hot.publish(first.segment, config.prefetch_percent);
        cell
    }
}

fn label(tag: &Arc<str>) -> TagLabel {
    TagLabel {
        tag: tag.to_string(),
    }
}

/// Takes a segment, within `load_timeout_ms`.
async fn load_bounded(
    ctx: &Ctx,
    tag: Arc<str>,
    step: Option<u64>,
    now_ms: u64,
) -> Result<store::Taken, IdError> {
    let limit = Duration::from_millis(ctx.config.load_timeout_ms);
    match tokio::time::timeout(limit, store::take_segment(&ctx.store, tag, step, now_ms)).await {
        Ok(taken) => taken,
        Err(_) => Err(IdError::Unavailable(format!(
            "the store did not hand out a segment within {} ms",
            ctx.config.load_timeout_ms
        ))),
    }
}

/// A loaded tag: where the hot path starts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TagHandle {
    cell: Arc<TagCell>,
    ctx: Arc<Ctx>,
}

impl TagHandle {
    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.cell.name
    }

    /// One ID. In steady state: one atomic add, no wait.
    #[inline]
    pub async fn next_id(&self) -> Result<u64, IdError> {
        if let Some(g) = self.cell.hot.take(1) {
            if g.prefetch {
                self.prefetch();
            }
            return Ok(g.first);
        }
        let mut out = Vec::with_capacity(1);
        Box::pin(self.fill_slow(1, &mut out)).await?;
        out.pop()
            .ok_or_else(|| IdError::Unavailable("no ID was granted".into()))
    }

    /// `count` IDs (1 to `max_count`), increasing; taken as ranges, not one by one.
    pub async fn next_ids(&self, count: u32) -> Result<Vec<u64>, IdError> {
        let mut left = self.ctx.check_count(count)?;
        let mut out = Vec::with_capacity(count as usize);
        left -= self.fill_fast(left, &mut out, false);
        if left > 0 {
            Box::pin(self.fill_slow(left, &mut out)).await?;
        }
        Ok(out)
    }

    /// This tag's buffer state.
    pub fn state(&self) -> TagState {
        self.cell.state()
    }

    /// Takes up to `n` IDs without waiting; returns how many. `bounded`: never move the
    /// counter past the segment's end (the slow path, where it is likely used up).
    fn fill_fast(&self, n: u64, out: &mut Vec<u64>, bounded: bool) -> u64 {
        let mut got = 0;
        while got < n {
            let hot = &self.cell.hot;
            let grant = if bounded {
                hot.take_bounded(n - got)
            } else {
                hot.take(n - got)
            };
            let Some(g) = grant else {
                break;
            };
            out.extend(g.first..g.first + g.count);
            got += g.count;
            if g.prefetch {
                self.prefetch();
            }
        }
        got
    }

    /// The prefetch point was taken: load the next segment in the background.
    fn prefetch(&self) {
        let step = self.cell.buffers.lock().poll_load(self.ctx.clock.now_ms());
        if let Some(step) = step {
            self.spawn_load(step);
        }
    }

    /// The current segment is used up: switch, wait for the load in flight, or start one;
    /// all within `load_timeout_ms`.
    async fn fill_slow(&self, mut left: u64, out: &mut Vec<u64>) -> Result<(), IdError> {
        let limit = Duration::from_millis(self.ctx.config.load_timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        let percent = self.ctx.config.prefetch_percent;
        let mut waited = false;
        loop {
            left -= self.fill_fast(left, out, true);
            if left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timed_out());
            }
            let loaded = self.cell.loaded.notified();
            let mut loaded = std::pin::pin!(loaded);
            // Registered before looking at the state, so a load finishing in between wakes us.
            loaded.as_mut().enable();
            let load = {
                let mut b = self.cell.buffers.lock();
                if !self.cell.hot.exhausted() || self.cell.switch_if_exhausted(&mut b, percent) {
                    continue;
                }
                if b.loading {
                    None
                } else if let Some(step) = b.poll_load(self.ctx.clock.now_ms()) {
                    Some(step)
                } else {
                    return Err(IdError::Unavailable(format!(
                        "tag {:?}: {}",
                        &*self.cell.name,
                        b.unavailable_reason()
                    )));
                }
            };
            if let Some(step) = load {
                self.spawn_load(step);
            }
            if !waited {
                waited = true;
                let label = self.cell.label();
                self.ctx.metrics.segment_waits.get_or_create(&label).inc();
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return Err(self.timed_out());
            }
        }
    }

    fn timed_out(&self) -> IdError {
        IdError::Unavailable(format!(
            "tag {:?}: no segment from the store within {} ms",
            &*self.cell.name, self.ctx.config.load_timeout_ms
        ))
    }

    /// Loads the next segment on the allocator's runtime; the buffers already say "loading".
    fn spawn_load(&self, step: u64) {
        let (cell, ctx) = (self.cell.clone(), self.ctx.clone());
        let span = tracing::debug_span!("segment_load", tag = %cell.name, step);
        let task = async move {
            let now = ctx.clock.now_ms();
            let result = if ctx.shutdown.is_cancelled() {
                Err(IdError::Unavailable(
                    "the ID service is shutting down".into(),
                ))
            } else {
                load_bounded(&ctx, cell.name.clone(), Some(step), now).await
            };
            let percent = ctx.config.prefetch_percent;
            {
                let mut b = cell.buffers.lock();
                match result {
                    Ok(taken) => {
                        ctx.metrics.segment_loads.get_or_create(&cell.label()).inc();
                        tracing::debug!(
                            start = taken.segment.start,
                            end = taken.segment.end,
                            "segment loaded"
                        );
                        b.handle_loaded(taken.segment, taken.step, now);
                        cell.switch_if_exhausted(&mut b, percent);
                    }
                    Err(e) => {
                        ctx.metrics
                            .segment_load_failures
                            .get_or_create(&cell.label())
                            .inc();
                        tracing::warn!(error = %e, "segment load failed");
                        b.handle_load_failed(e.to_string(), ctx.clock.now_ms());
                    }
                }
            }
            cell.loaded.notify_waiters();
        };
        self.ctx
            .tasks
            .spawn_on(task.instrument(span), &self.ctx.runtime);
    }
}
