//! Helpers shared by the integration tests: stores in temporary directories, services on a
//! manual clock.

#![allow(dead_code)] // each test binary uses its own subset

use roam_idsvc::{IdMetrics, IdService, IdsConfig, ManualClock};
use roam_store::Store;
use std::{path::Path, sync::Arc};

/// A time well after the default epoch (ms since the Unix epoch).
pub(crate) const T0: u64 = roam_idsvc::DEFAULT_EPOCH_MS + 1_000_000_000;

pub(crate) async fn open(dir: &Path) -> Store {
    Store::open(&format!("embedded:{}", dir.display()))
        .await
        .expect("open store")
}

pub(crate) fn config() -> IdsConfig {
    IdsConfig {
        load_timeout_ms: 2_000,
        ..IdsConfig::default()
    }
}

pub(crate) async fn service(
    store: &Store,
    clock: &Arc<ManualClock>,
    config: IdsConfig,
) -> Arc<IdService> {
    IdService::start_with_clock(store.clone(), config, IdMetrics::default(), clock.clone())
        .await
        .expect("start service")
}

/// The raw key of a segment tag (the layout pinned in `keys.rs`), for fault injection.
pub(crate) fn tag_key(tag: &str) -> Vec<u8> {
    roam_store::tuple::pack(&("ids", 0u16, tag))
}

/// Reads a raw value.
pub(crate) async fn raw_get(store: &Store, key: Vec<u8>) -> Option<Vec<u8>> {
    store
        .transact(move |tx| Ok(tx.get(&key)?.map(|b| b.to_vec())))
        .await
        .expect("read")
}

/// Writes a raw value.
pub(crate) async fn raw_set(store: &Store, key: Vec<u8>, value: Vec<u8>) {
    store
        .transact(move |tx| tx.set(&key, &value))
        .await
        .expect("write")
}
