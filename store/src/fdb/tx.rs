//! One attempt of a FoundationDB transaction, run on a blocking thread.

use super::classify;
use crate::{KeyValue, TxError, tx::RawTx};
use bytes::Bytes;
use foundationdb::{
    KeySelector, RangeOption, Transaction,
    options::{MutationType, StreamingMode},
};
use std::future::Future;
use tokio::runtime::Handle;

pub(super) struct FdbTx {
    trx: Transaction,
    handle: Handle,
}

impl FdbTx {
    pub(super) fn new(trx: Transaction, handle: Handle) -> Self {
        Self { trx, handle }
    }

    pub(super) fn into_inner(self) -> Transaction {
        self.trx
    }

    /// Waits for a FoundationDB future (we are on a blocking thread; the FoundationDB
    /// network thread completes it).
    fn wait<T>(&self, fut: impl Future<Output = foundationdb::FdbResult<T>>) -> Result<T, TxError> {
        self.handle.block_on(fut).map_err(classify)
    }
}

impl RawTx for FdbTx {
    fn get(&mut self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, TxError> {
        let value = self.wait(self.trx.get(key, snapshot))?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
        snapshot: bool,
    ) -> Result<Vec<KeyValue>, TxError> {
        let mut opt = RangeOption {
            limit,
            reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((
                KeySelector::first_greater_or_equal(begin.to_vec()),
                KeySelector::first_greater_or_equal(end.to_vec()),
            ))
        };
        let mut out = Vec::new();
        for iteration in 1.. {
            let values = self.wait(self.trx.get_range(&opt, iteration, snapshot))?;
            out.extend(values.iter().map(|kv| KeyValue {
                key: Bytes::copy_from_slice(kv.key()),
                value: Bytes::copy_from_slice(kv.value()),
            }));
            match opt.next_range(&values) {
                Some(next) => opt = next,
                None => break,
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.trx.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.trx.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.trx.clear_range(begin, end);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.trx
            .atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
    }
}
