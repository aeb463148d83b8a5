//! The PostgreSQL server the tests use, and queues isolated in schemas of their own.
//!
//! The server is `AMBOY_TEST_DATABASE_URL`, else the local default
//! (`postgres://postgres@127.0.0.1:5432/postgres`); `cargo xtask ci` starts one when neither
//! answers. Every queue a test builds gets a schema no other test uses (`amboy_test_…`);
//! `cargo xtask ci` drops the schemas of earlier runs before it tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amboy::postgres::{PostgresQueue, PostgresQueueOptions};

/// The local default server.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The test server's URL.
pub fn url() -> String {
    std::env::var("AMBOY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema name no other queue of any test process uses.
pub fn unique_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "amboy_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand_suffix()
    )
}

fn fastrand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::SystemTime::now()) & 0xffff_ffff) as u32
}

/// Options for a queue in a fresh schema of the test server, with short polls so that tests
/// do not wait on the fallback: a small pool, polling every 50 ms, maintenance every 100 ms.
pub fn options() -> PostgresQueueOptions {
    let mut options = PostgresQueueOptions::with_url(url()).schema(unique_schema());
    options.max_connections = 4;
    options.poll_interval = Duration::from_millis(50);
    options.maintenance_interval = Duration::from_millis(100);
    options
}

/// A queue with `options`.
pub fn queue(options: PostgresQueueOptions) -> Arc<PostgresQueue> {
    PostgresQueue::new(options).expect("valid options")
}

/// The connections listening on `schema`'s notification channel, as `pg_stat_activity` shows
/// (a listener's last statement is its `LISTEN`).
pub async fn listeners(pool: &sqlx::PgPool, schema: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' \
         AND query LIKE '%' || $1 || '%'",
    )
    .bind(format!("amboy_{schema}"))
    .fetch_one(pool)
    .await
    .expect("activity")
}

/// Waits (up to 30 s) until a connection listens on `schema`'s notification channel.
pub async fn until_listening(pool: &sqlx::PgPool, schema: &str) {
    let listened = tokio::time::timeout(Duration::from_secs(30), async {
        while listeners(pool, schema).await == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(listened.is_ok(), "nobody listens on {schema}'s channel");
}

/// Waits (up to 30 s) until a statement on the jobs table of `schema` whose text contains
/// `marker` waits for a lock, as `pg_stat_activity` shows: the interleaving a test forces was
/// reached.
pub async fn until_waiting_for_a_lock(pool: &sqlx::PgPool, schema: &str, marker: &str) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%' || $2 || '%' AND query LIKE '%' || $1 || '.jobs%'",
            )
            .bind(schema)
            .bind(marker)
            .fetch_one(pool)
            .await
            .expect("activity");
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "no statement with '{marker}' waited for a lock"
    );
}
