//! Rows of one table written grouped by partition key: an unlogged batch
//! per key (one mutation on one replica set), split below Cassandra's
//! batch size limit, a plain statement for a key with one row.

use std::{collections::HashMap, hash::Hash};

use ::scylla::{
    client::caching_session::CachingSession,
    errors::ExecutionError,
    serialize::row::SerializeRow,
    statement::batch::{Batch, BatchType},
};

use crate::store::OpCounts;

/// Value bytes past which a batch is split: Cassandra refuses a batch over
/// `batch_size_fail_threshold` (50 KiB by default; ScyllaDB's is 1 MiB).
const BATCH_BYTES: usize = 24 * 1024;

/// Writes `rows` (partition key, values, approximate bytes) of one table:
/// one statement per partition key and [`BATCH_BYTES`], a batch when it
/// holds several rows; concurrently.
pub(super) async fn write_table<K: Hash + Eq, V: SerializeRow>(
    session: &CachingSession,
    ops: &OpCounts,
    cql: &'static str,
    rows: impl Iterator<Item = (K, V, usize)>,
) -> Result<(), ExecutionError> {
    let mut by_key: HashMap<K, Vec<(V, usize)>> = HashMap::new();
    for (key, values, bytes) in rows {
        by_key.entry(key).or_default().push((values, bytes));
    }
    let mut chunks: Vec<Vec<V>> = Vec::new();
    for rows in by_key.into_values() {
        let (mut chunk, mut size) = (Vec::new(), 0);
        for (values, bytes) in rows {
            if !chunk.is_empty() && size + bytes > BATCH_BYTES {
                chunks.push(std::mem::take(&mut chunk));
                size = 0;
            }
            size += bytes;
            chunk.push(values);
        }
        chunks.push(chunk);
    }
    let sends = chunks.iter().map(|chunk| async move {
        ops.write();
        if let [one] = chunk.as_slice() {
            return session.execute_unpaged(cql, one).await.map(drop);
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in chunk {
            batch.append_statement(cql);
        }
        session.batch(&batch, chunk).await.map(drop)
    });
    futures::future::try_join_all(sends).await.map(drop)
}
