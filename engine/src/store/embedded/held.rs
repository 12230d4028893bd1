//! The embedded store's held deliveries: a paused subscription's deliveries
//! stay in the schedule with `held = 1`, due only at a far re-check time,
//! until a resume makes them due (see [`crate::store::Store::hold`]).

use rusqlite::params;

use super::{db_err, EmbeddedStore};
use crate::{model::ScheduledDelivery, store::StoreError};

impl EmbeddedStore {
    /// One transaction for all of `deliveries`.
    pub(super) async fn h_hold_all(
        &self,
        deliveries: &[ScheduledDelivery],
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        let ids: Vec<String> = deliveries.iter().map(|d| d.delivery_id.clone()).collect();
        self.write(move |conn| {
            let mut st = conn
                .prepare_cached(
                    "UPDATE schedule SET due_at = ?1, leased = 0, held = 1 WHERE delivery_id = ?2",
                )
                .map_err(db_err)?;
            for id in &ids {
                st.execute(params![recheck_at_ms, id]).map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    /// Due times one millisecond apart, the last at `now_ms`: the scheduler
    /// claims by due time, so the held deliveries go out in event order.
    pub(super) async fn h_release_held(
        &self,
        subscription_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sub = subscription_id.to_string();
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT delivery_id FROM schedule
                     WHERE subscription_id = ?1 AND held = 1 AND leased = 0
                     ORDER BY seq, delivery_id LIMIT ?2",
                )
                .and_then(|mut st| {
                    st.query_map(params![&sub, limit], |r| r.get(0))?
                        .collect::<Result<_, _>>()
                })
                .map_err(db_err)?;
            let first = now_ms - ids.len() as i64 + 1;
            let mut release = conn
                .prepare_cached("UPDATE schedule SET due_at = ?1, held = 0 WHERE delivery_id = ?2")
                .map_err(db_err)?;
            for (i, id) in ids.iter().enumerate() {
                release
                    .execute(params![first + i as i64, id])
                    .map_err(db_err)?;
            }
            Ok(ids.len() as u64)
        })
        .await
    }
}
