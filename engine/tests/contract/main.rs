//! The store contract: one suite per role trait, every test run on both
//! backends — the embedded SQLite store in a temporary directory and the
//! CQL store in a fresh keyspace on the Cassandra at
//! `HERALD_TEST_SCYLLA_NODES` (127.0.0.1:9042 unless set; `scripts/services
//! up cassandra` starts it). The same assertions run on both, so the
//! backends cannot drift apart. Without a reachable CQL node the `cql`
//! tests fail, loudly.
//!
//! Each test is an `async fn(&Harness)` in its role's module, listed in that
//! module's `contract!` call, which makes `<role>::embedded::<test>` and
//! `<role>::cql::<test>`.

/// Makes `embedded::<name>` and `cql::<name>` tests of each listed
/// `async fn <name>(&Harness)` of the calling module.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let h = crate::backend::Harness::embedded().await;
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let h = crate::backend::Harness::cql(stringify!($name)).await;
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}

mod audit;
mod backend;
mod catalogue;
mod delivery_log;
mod events;
mod fixtures;
mod purge;
mod recovery;
mod schedule;
mod subscriptions;
mod tenants;
mod upgrade;
