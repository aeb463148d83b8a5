//! The PostgreSQL queue beyond the conformance matrix: amboy's driver tests (its reference,
//! §15.3) and what the database adds: claims across queue instances, stale jobs first, fencing,
//! batched puts, bad stored jobs, transactional put, migrations, notifications, dependencies
//! and retention. Each test works in a schema of its own.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use amboy::dependency::{Manager, MockDependency, State};
use amboy::postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use amboy::postgres::sqlx::{self, PgPool};
use amboy::postgres::{PostgresQueue, PostgresQueueOptions};
use amboy::registry::JobInterchange;
use amboy::{Base, Error, JobRef, Queue, RetryableQueue as _};
use amboy_tests::cases::IdleRunner;
use amboy_tests::jobs::Noop;
use amboy_tests::postgres::{options, queue, until_listening};
use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Long enough for anything that should happen to happen; a test fails, not hangs.
const LIMIT: Duration = Duration::from_secs(30);

/// A started queue whose runner runs nothing: the test calls `next` and `complete`.
async fn idle(options: PostgresQueueOptions) -> Arc<PostgresQueue> {
    let queue = queue(options);
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    queue
}

async fn next(queue: &PostgresQueue) -> JobRef {
    tokio::time::timeout(LIMIT, queue.next())
        .await
        .expect("a job in time")
        .expect("the queue is open")
}

async fn sql(pool: &PgPool, statement: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(pool)
        .await
        .expect("the statement runs");
}

/// What `job_info` lists for job `id`.
async fn listed(queue: &PostgresQueue, id: &str) -> amboy::JobInfo {
    queue
        .job_info()
        .await
        .map(|info| info.expect("info"))
        .filter(|info| std::future::ready(info.id == id))
        .next()
        .await
        .expect("listed")
}

fn noop(id: impl AsRef<str>) -> JobRef {
    Noop::new(id)
}

fn scoped(id: &str, scopes: &[&str], enqueue: bool) -> JobRef {
    let base = Base::with_id(id).with_scopes(scopes.iter().copied());
    let base = if enqueue {
        base.with_enqueue_all_scopes()
    } else {
        base
    };
    Arc::new(Noop { base })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_nexts_on_one_job_have_one_winner() {
    // 10 queue instances on one table, 10 waiting `next` calls each, one job.
    let options = options();
    let queues: Vec<Arc<PostgresQueue>> =
        futures::future::join_all((0..10).map(|_| idle(options.clone()))).await;
    let calls = futures::stream::FuturesUnordered::new();
    for queue in &queues {
        for _ in 0..10 {
            let queue = queue.clone();
            calls.push(tokio::spawn(async move { queue.next().await }));
        }
    }
    queues[0].put(noop("contested")).await.expect("put");
    let mut calls = calls;
    let winner = tokio::time::timeout(LIMIT, calls.next())
        .await
        .expect("a winner in time")
        .expect("a call")
        .expect("joined")
        .expect("the job");
    assert_eq!(winner.id(), "contested");
    for queue in &queues {
        queue.close().await;
    }
    let mut others = 0;
    while let Some(call) = calls.next().await {
        let error = call.expect("joined").expect_err("no second winner");
        assert!(error.is_closed(), "{error}");
        others += 1;
    }
    assert_eq!(others, 99);
    let stored = queues[0].get("contested").await.expect("stored");
    assert_eq!(
        stored.status().modification_count,
        1,
        "claimed exactly once: {:?}",
        stored.status()
    );
    assert_eq!(stored.status().owner, winner.status().owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_in_progress_jobs_come_before_pending_ones() {
    // Not started yet: nothing is claimed (ahead) before the stale jobs are in place.
    let queue = queue(options());
    for n in 0..10 {
        queue.put(noop(format!("job-{n}"))).await.expect("put");
    }
    // Three jobs whose owner died an hour ago (the lock timeout is 10 minutes).
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET state = 1, owner = 'dead', mod_count = 1, \
             lock_ts = now() - interval '1 hour' WHERE id IN ('job-3', 'job-5', 'job-7')"
        ),
    )
    .await;
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    // Claims take stale jobs before pending ones, so once a pending job is handed out, every
    // stale job was claimed already (by that claim or an earlier one), whatever the order in
    // which a claim's jobs are handed out. (One claim at a time with this small pool.)
    let stale = ["job-3", "job-5", "job-7"];
    let mut taken = Vec::new();
    loop {
        let job = next(&queue).await;
        taken.push(job.id().to_owned());
        if !stale.contains(&job.id()) {
            break;
        }
    }
    let ours: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {schema}.jobs WHERE owner = $1 ORDER BY id"
    )))
    .bind(queue.id())
    .fetch_all(queue.pool())
    .await
    .expect("owned");
    for id in stale {
        assert!(
            ours.iter().any(|owned| owned == id),
            "{id} claimed first: {ours:?}"
        );
    }
    while taken.len() < 10 {
        taken.push(next(&queue).await.id().to_owned());
    }
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 10, "every job handed out once");
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.running, stats.pending), (10, 0), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_skips_jobs_another_owner_holds() {
    // Not started yet: nothing is claimed (ahead) before the other owner holds its jobs.
    let queue = queue(options());
    let jobs: Vec<JobRef> = (0..30).map(|n| noop(format!("job-{n:02}"))).collect();
    queue.put_many(jobs).await.expect("put many");
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET state = 1, owner = 'alive', mod_count = 1, \
             lock_ts = now() WHERE id < 'job-10'"
        ),
    )
    .await;
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    for _ in 0..20 {
        let job = next(&queue).await;
        assert!(
            job.id() >= "job-10",
            "{} is held by another owner",
            job.id()
        );
    }
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.running, stats.pending), (30, 0), "{stats}");
}

/// Another owner ('other') takes the job over, its count five ahead, as a process that found
/// the lock expired would.
async fn take_over(queue: &PostgresQueue, id: &str) {
    let schema = &queue.options().schema;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.jobs SET owner = 'other', mod_count = mod_count + 5, \
         lock_ts = now() WHERE id = $1"
    )))
    .bind(id)
    .execute(queue.pool())
    .await
    .expect("taken over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lock_can_no_longer_write_the_job() {
    let queue = idle(options()).await;
    queue.put(noop("taken-over")).await.expect("put");
    let job = next(&queue).await;
    let run = job
        .base()
        .run_token(&CancellationToken::new())
        .expect("a watched run");
    // Another process took the job over (its lock expired, say).
    take_over(&queue, "taken-over").await;
    // The heartbeat finds out: the lock is lost and the run interrupted.
    assert_eq!(queue.dispatcher().refresh_locks(&*queue).await, 0);
    assert!(run.is_cancelled(), "the run is interrupted");
    assert!(
        job.error()
            .is_some_and(|error| error.message().contains("lost the lock")),
        "{:?}",
        job.error()
    );
    // Its writes fail and change nothing.
    let saved = queue.save(&job).await.expect_err("the save is refused");
    assert!(saved.is_job_not_found(), "{saved}");
    let completed = queue.complete(&job).await.expect_err("refused");
    assert!(completed.is_job_not_found(), "{completed}");
    let stored = queue.get("taken-over").await.expect("stored");
    assert_eq!(stored.status().owner.as_deref(), Some("other"));
    assert!(stored.status().in_progress && !stored.status().completed);
}

/// A TCP proxy to the test server that, once armed, swallows the first reply holding the
/// command tag `UPDATE 1` (in an idle queue, a claim of one job) and cuts that connection: the
/// statement committed (PostgreSQL sends the tag with the commit's reply), its reply never
/// arrives.
struct ReplyCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl ReplyCutter {
    async fn start() -> ReplyCutter {
        let server = PgConnectOptions::from_str(&amboy_tests::postgres::url()).expect("the URL");
        let upstream = format!("{}:{}", server.get_host(), server.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed_, cuts_) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, armed, cuts) = (upstream.clone(), armed_.clone(), cuts_.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let requests = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let reply = &buffer[..n];
                        if reply.windows(9).any(|tag| tag == b"UPDATE 1\0")
                            && armed.swap(false, SeqCst)
                        {
                            cuts.fetch_add(1, SeqCst);
                            break;
                        }
                        if client_write.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                    // Both connections close as their halves drop.
                    requests.abort();
                });
            }
        });
        ReplyCutter { port, armed, cuts }
    }

    /// A pool connecting through the proxy.
    fn pool(&self) -> PgPool {
        let connect = PgConnectOptions::from_str(&amboy_tests::postgres::url())
            .expect("the URL")
            .host("127.0.0.1")
            .port(self.port);
        PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(connect)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_gives_its_jobs_back_at_once() {
    let cutter = ReplyCutter::start().await;
    let mut options = options().lock_timeout(Duration::from_secs(3600));
    options.pool = Some(cutter.pool());
    let queue = idle(options).await;
    // The claim of this job commits, and its connection breaks before the reply arrives.
    cutter.armed.store(true, SeqCst);
    queue.put(noop("lost-reply")).await.expect("put");
    // The waiting call gets the claim's error (a runner backs off, then asks again). The lock
    // would last an hour: the job comes back because the queue gave it back.
    let job = tokio::time::timeout(LIMIT, async {
        loop {
            match queue.next().await {
                Ok(job) => break job,
                Err(error) => assert!(!error.is_closed(), "{error}"),
            }
        }
    })
    .await
    .expect("the job in time");
    assert_eq!(job.id(), "lost-reply");
    assert_eq!(cutter.cuts.load(SeqCst), 1, "a reply was cut");
    let stored = queue.get("lost-reply").await.expect("stored");
    assert_eq!(
        stored.status().modification_count,
        3,
        "claimed, given back, claimed again: {:?}",
        stored.status()
    );
}

/// A heartbeat that committed but whose reply was lost is sent again, rather than taken back
/// in memory: the worker's copy keeps the count the database holds, and its completion is
/// accepted. (Taken back, the copy was one count behind the row until the next heartbeat, and
/// a completion meanwhile was refused: the job ran again after the lock timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_whose_reply_was_lost_is_sent_again() {
    let cutter = ReplyCutter::start().await;
    // Heartbeats every two seconds.
    let mut options = options().lock_timeout(Duration::from_secs(8));
    options.pool = Some(cutter.pool());
    let queue = idle(options).await;
    queue.put(noop("beating")).await.expect("put");
    let job = next(&queue).await;
    // The first heartbeat's statement commits, and its connection breaks before the reply.
    cutter.armed.store(true, SeqCst);
    tokio::time::timeout(LIMIT, async {
        while cutter.cuts.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a heartbeat's reply was cut");
    // Well before the next heartbeat, the copy holds the count stored.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let schema = &queue.options().schema;
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT mod_count FROM {schema}.jobs WHERE id = 'beating'"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("the row");
    assert_eq!(
        job.status().modification_count as i64,
        stored,
        "the copy's count is the row's"
    );
    queue
        .complete(&job)
        .await
        .expect("the completion is accepted");
    assert!(
        queue
            .get("beating")
            .await
            .expect("stored")
            .status()
            .completed
    );
}

/// A completion that is not stored leaves the copy as stored (its count not advanced): written
/// again once it may be (a retry handler finishing it, say), it is one count ahead of the row,
/// as the fence wants, however many writes failed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_not_stored_can_be_written_again() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    queue.put(noop("later")).await.expect("put");
    let job = next(&queue).await;
    let count = job.status().modification_count;
    // Held elsewhere for a while: twice refused.
    sql(
        queue.pool(),
        format!("UPDATE {schema}.jobs SET owner = 'other' WHERE id = 'later'"),
    )
    .await;
    for _ in 0..2 {
        queue.complete(&job).await.expect_err("fenced out");
        assert_eq!(job.status().modification_count, count, "as stored");
        assert!(!job.status().completed);
    }
    // Back with this queue: the completion goes through.
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET owner = '{}' WHERE id = 'later'",
            queue.id()
        ),
    )
    .await;
    queue.complete(&job).await.expect("stored now");
    assert!(queue.get("later").await.expect("stored").status().completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_with_a_stale_modification_count_fails() {
    let queue = idle(options()).await;
    queue.put(noop("counted")).await.expect("put");
    let job = next(&queue).await;
    let copy = queue.get("counted").await.expect("a copy");
    // The worker's copy moves on twice (two heartbeats' worth); the stale copy cannot write.
    queue.save(&job).await.expect("the owner saves");
    let owner: Arc<str> = Arc::from(queue.id());
    job.lock(&owner, queue.info().lock_timeout).expect("lock");
    queue.save(&job).await.expect("one ahead is fine");
    job.lock(&owner, queue.info().lock_timeout).expect("lock");
    job.lock(&owner, queue.info().lock_timeout).expect("lock");
    let error = queue.save(&job).await.expect_err("two ahead is refused");
    assert!(error.is_job_not_found(), "{error}");
    let error = queue.save(&copy).await.expect_err("behind is refused");
    assert!(error.is_job_not_found(), "{error}");
}

/// The address of a job's row (`ctid`), as a locator: block << 16 | offset.
async fn address_of(queue: &PostgresQueue, id: &str) -> u64 {
    let schema = &queue.options().schema;
    let (block, offset): (i64, i32) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (ctid::text::point)[0]::bigint, (ctid::text::point)[1]::int \
         FROM {schema}.jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(queue.pool())
    .await
    .expect("the row");
    ((block as u64) << 16) | offset as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_finds_its_row_where_it_was_last_seen_or_by_key() {
    let queue = idle(options()).await;
    for id in ["kept", "moved"] {
        queue.put(noop(id)).await.expect("put");
    }
    let first = next(&queue).await;
    let second = next(&queue).await;
    // The claim and each heartbeat tell the job where its row is.
    for job in [&first, &second] {
        let locator = job.base().metadata().locator();
        assert_eq!(locator, address_of(&queue, job.id()).await, "{}", job.id());
    }
    assert_eq!(queue.dispatcher().refresh_locks(&*queue).await, 2);
    for job in [&first, &second] {
        let locator = job.base().metadata().locator();
        assert_eq!(locator, address_of(&queue, job.id()).await, "{}", job.id());
    }
    // A write the queue does not know of moves one row: its completion misses it at the old
    // address and writes it by key.
    let moved = if first.id() == "moved" {
        &first
    } else {
        &second
    };
    let before = address_of(&queue, "moved").await;
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!("UPDATE {schema}.jobs SET dependents = dependents WHERE id = 'moved'"),
    )
    .await;
    assert_ne!(address_of(&queue, "moved").await, before, "the row moved");
    assert_eq!(moved.base().metadata().locator(), before);
    for job in [&first, &second] {
        queue.complete(job).await.expect("completed");
    }
    for id in ["kept", "moved"] {
        let stored = queue.get(id).await.expect("stored");
        assert!(
            stored.status().completed && !stored.status().in_progress,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_put_many_is_stored_exactly_and_reports_duplicates() {
    // A large batch goes in as several statements at once: IDs with control characters and
    // backslashes, priorities and deadlines come back as they went in.
    let queue = queue(options());
    let deadline = Utc::now() + TimeDelta::hours(1);
    let jobs: Vec<JobRef> = (0..300)
        .map(|n| -> JobRef {
            let base = Base::with_id(format!("copied\\{n}\t\n\r\\N"))
                .with_priority(n % 7)
                .with_dispatch_by(deadline);
            Arc::new(Noop { base })
        })
        .collect();
    queue.put_many(jobs).await.expect("put");
    for n in [0, 1, 150, 299] {
        let id = format!("copied\\{n}\t\n\r\\N");
        let stored = queue.get(&id).await.expect("stored");
        assert_eq!(stored.id(), id);
        assert_eq!(stored.priority(), n % 7);
        let kept = stored.time_info().dispatch_by.expect("a deadline");
        assert!(
            (kept - deadline).num_milliseconds().abs() < 1,
            "{kept} vs {deadline}"
        );
    }
    assert_eq!(queue.stats().await.expect("stats").total, 300);
    // A batch with one duplicate stores the others and names the duplicate.
    let mut again: Vec<JobRef> = (300..500).map(|n| noop(format!("copied-{n}"))).collect();
    again.push(noop("copied\\0\t\n\r\\N"));
    let error = queue.put_many(again).await.expect_err("one duplicate");
    assert!(error.is_duplicate_job(), "{error}");
    assert_eq!(queue.stats().await.expect("stats").total, 500);
    // A put of thousands is inserted a chunk at a time while the next is encoded: a duplicate
    // in a middle chunk is named and the rest stored, a job with an edge after its edge.
    let mut many: Vec<JobRef> = (0..2500).map(|n| noop(format!("many-{n}"))).collect();
    many[1200] = noop("copied-300");
    many.push(waiting_on("many-edge", "many-2400", 0));
    let error = queue.put_many(many).await.expect_err("one duplicate");
    assert!(
        error.is_duplicate_job() && error.to_string().contains("copied-300"),
        "{error}"
    );
    assert_eq!(queue.stats().await.expect("stats").total, 500 + 2499 + 1);
    assert!(queue.get("many-edge").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_reports_duplicates_and_stores_the_rest() {
    let queue = queue(options());
    queue.put_many(Vec::new()).await.expect("nothing to put");
    queue
        .put_many(vec![noop("a"), noop("b")])
        .await
        .expect("distinct jobs");
    let error = queue
        .put_many(vec![noop("a"), noop("c")])
        .await
        .expect_err("a is a duplicate");
    assert!(error.is_duplicate_job(), "{error}");
    assert!(queue.get("c").await.is_ok(), "the new job is stored");

    // Enqueue scopes: a clash is a duplicate and a scope duplicate.
    queue
        .put(scoped("holder", &["s1"], true))
        .await
        .expect("put holder");
    let error = queue
        .put_many(vec![scoped("rival", &["s1"], true), noop("d")])
        .await
        .expect_err("the scope is held");
    assert!(
        error.is_duplicate_job() && error.is_duplicate_scope(),
        "{error}"
    );
    assert!(queue.get("d").await.is_ok());
    assert!(queue.get("rival").await.unwrap_err().is_job_not_found());
    // Dispatch-only scopes do not clash at put.
    queue
        .put(scoped("dispatch-only", &["s1"], false))
        .await
        .expect("dispatch scopes are taken at next");
    assert_eq!(queue.stats().await.expect("stats").total, 6);
}

/// A stored job whose type nobody registered: set aside when claimed, never run, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_job_that_cannot_be_decoded_is_set_aside() {
    let queue = idle(options()).await;
    let envelope =
        JobInterchange::from_json(r#"{"name":"alien","type":"no-such-type","version":0,"job":{}}"#)
            .expect("an envelope");
    queue.put_interchange(envelope).await.expect("stored as is");
    queue.put(noop("fine")).await.expect("put");
    assert_eq!(
        next(&queue).await.id(),
        "fine",
        "the bad job blocks nothing"
    );
    let alien = listed(&queue, "alien").await;
    assert!(alien.status.completed, "{:?}", alien.status);
    assert!(
        alien
            .status
            .errors
            .iter()
            .any(|e| e.contains("no-such-type")),
        "{:?}",
        alien.status.errors
    );
    let error = queue.get("alien").await.expect_err("cannot be decoded");
    assert!(error.to_string().contains("alien"), "{error}");
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.context.get("undecodable"), Some(&1.into()), "{stats}");
    assert_eq!(stats.completed, 1, "{stats}");
}

/// A job set aside when claimed is finished and holds no scope: its enqueue scope is free for
/// the next job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_set_aside_frees_its_scopes() {
    let queue = idle(options()).await;
    queue
        .put(scoped("alien", &["s1"], true))
        .await
        .expect("put");
    // Its type is gone from the processes (a deploy dropped it).
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!("UPDATE {schema}.jobs SET job_type = 'no-such-type' WHERE id = 'alien'"),
    )
    .await;
    let error = queue
        .put(scoped("early", &["s1"], true))
        .await
        .expect_err("the scope is held");
    assert!(error.is_duplicate_scope(), "{error}");
    queue.put(noop("fine")).await.expect("put");
    // The claim that hands out `fine` sets `alien` aside first.
    assert_eq!(next(&queue).await.id(), "fine");
    queue
        .put(scoped("rival", &["s1"], true))
        .await
        .expect("the scope is free again");
    assert_eq!(next(&queue).await.id(), "rival");
}

/// A job its dependency manager blocks goes back to pending without the dispatch scopes it
/// took, so that a job needing them runs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_job_does_not_keep_its_dispatch_scopes() {
    let queue = idle(options()).await;
    let blocked = Base::with_id("blocked")
        .with_scopes(["s1"])
        .with_dependency(MockDependency::new(State::Blocked));
    queue
        .put(Arc::new(Noop { base: blocked }))
        .await
        .expect("put");
    queue
        .put(scoped("other", &["s1"], false))
        .await
        .expect("put");
    assert_eq!(next(&queue).await.id(), "other");
}

/// Gates of [`GatedManager`]s, by name: the manager's `state` says it was asked, then answers
/// what the test sends.
#[allow(clippy::type_complexity)]
static GATES: std::sync::LazyLock<
    std::sync::Mutex<
        std::collections::HashMap<
            String,
            (
                tokio::sync::oneshot::Sender<()>,
                tokio::sync::oneshot::Receiver<State>,
            ),
        >,
    >,
> = std::sync::LazyLock::new(Default::default);

/// A dependency manager (doing blocking I/O, so asked on a blocking thread) that holds the
/// claim admitting its job until the test lets it answer; without a gate, it is ready.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GatedManager {
    gate: String,
}

#[typetag::serde(name = "pg-test-gated-manager")]
impl Manager for GatedManager {
    fn state(&self) -> State {
        let gate = GATES.lock().unwrap().remove(&self.gate);
        match gate {
            Some((asked, answer)) => {
                let _ = asked.send(());
                answer.blocking_recv().unwrap_or(State::Ready)
            }
            None => State::Ready,
        }
    }

    fn edges(&self) -> Vec<String> {
        Vec::new()
    }

    fn add_edge(&self, _id: &str) -> Result<(), amboy::dependency::DependencyError> {
        Ok(())
    }

    fn does_blocking_io(&self) -> bool {
        true
    }
}

/// A claimed job given back (its manager says it is blocked) after another owner took it over
/// frees nothing: the give-back is fenced, and the dispatch scope it took, now its new owner's,
/// stays held. The take-over is forced in between: the claim holds while the manager is asked,
/// the test takes the job over in a transaction, lets the manager answer, and commits only once
/// the give-back waits for the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_after_a_take_over_frees_nothing() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let (answer, answer_rx) = tokio::sync::oneshot::channel();
    GATES
        .lock()
        .unwrap()
        .insert(format!("{schema}/contested"), (asked_tx, answer_rx));
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("contested")
                .with_scopes(["s1"])
                .with_dependency(GatedManager {
                    gate: format!("{schema}/contested"),
                }),
        }))
        .await
        .expect("put");
    let taker = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await }
    });
    tokio::time::timeout(LIMIT, asked)
        .await
        .expect("the claim asks the manager")
        .expect("asked");
    let held: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT job_id FROM {schema}.scopes WHERE scope = 's1'"
    )))
    .fetch_all(queue.pool())
    .await
    .expect("scopes");
    assert_eq!(held, ["contested"], "the claim took the dispatch scope");

    // Another process takes the job over (its scope with it), and holds the row meanwhile.
    let mut tx = queue.pool().begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.jobs SET owner = 'other', mod_count = mod_count + 5, \
         lock_ts = now() WHERE id = 'contested'"
    )))
    .execute(&mut *tx)
    .await
    .expect("taken over");
    answer.send(State::Blocked).expect("the manager waits");
    // The give-back reaches the row and waits for the take-over's commit.
    amboy_tests::postgres::until_waiting_for_a_lock(queue.pool(), &schema, "WITH back AS").await;
    tx.commit().await.expect("commit the take-over");
    // Closing waits for the claim, give-back included, to end.
    queue.close().await;
    assert!(taker.await.expect("no panic").is_err(), "the queue closed");

    let (owner, state): (String, i16) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT owner, state FROM {schema}.jobs WHERE id = 'contested'"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("the job");
    assert_eq!(
        (owner.as_str(), state),
        ("other", 1),
        "the new owner's, running"
    );
    let held: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT job_id FROM {schema}.scopes WHERE scope = 's1'"
    )))
    .fetch_all(queue.pool())
    .await
    .expect("scopes");
    assert_eq!(held, ["contested"], "the new owner keeps the scope");
}

/// The jobs holding scope `scope` in `queue`'s schema.
async fn holders(queue: &PostgresQueue, scope: &str) -> Vec<String> {
    let schema = &queue.options().schema;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT job_id FROM {schema}.scopes WHERE scope = $1 ORDER BY job_id"
    )))
    .bind(scope)
    .fetch_all(queue.pool())
    .await
    .expect("scopes")
}

/// A claimed job that management completes before the claim takes its dispatch scopes takes
/// none: the take is fenced. Both jobs are claimed at once (two `next` calls waiting, on a
/// one-thread runtime, before the claimer runs); the first one's manager holds the claim until
/// management completed the second.
#[tokio::test]
async fn a_job_completed_before_its_claim_took_its_scopes_takes_none() {
    use amboy::management::Manager as _;
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let (answer, answer_rx) = tokio::sync::oneshot::channel();
    GATES
        .lock()
        .unwrap()
        .insert(format!("{schema}/first"), (asked_tx, answer_rx));
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("first")
                .with_priority(10)
                .with_dependency(GatedManager {
                    gate: format!("{schema}/first"),
                }),
        }))
        .await
        .expect("put");
    queue
        .put(scoped("second", &["s1"], false))
        .await
        .expect("put");
    let taker = |queue: Arc<PostgresQueue>| tokio::spawn(async move { queue.next().await });
    let takers = [taker(queue.clone()), taker(queue.clone())];
    tokio::time::timeout(LIMIT, asked)
        .await
        .expect("the claim asks the first job's manager")
        .expect("asked");
    let claimed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.jobs WHERE state = 1"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("count");
    assert_eq!(claimed, 2, "one claim took both jobs");
    assert!(holders(&queue, "s1").await.is_empty(), "not admitted yet");
    amboy::postgres::PostgresManager::for_queue(&queue)
        .complete_job("second")
        .await
        .expect("management completes it");
    answer.send(State::Ready).expect("the manager waits");
    let (first, _, other) = tokio::time::timeout(LIMIT, futures::future::select_all(takers))
        .await
        .expect("a taker gets a job");
    assert_eq!(first.expect("no panic").expect("a job").id(), "first");
    // Closing waits for the claim, the second job's admission included, to end.
    queue.close().await;
    for taker in other {
        assert!(taker.await.expect("no panic").is_err(), "the queue closed");
    }
    assert!(
        holders(&queue, "s1").await.is_empty(),
        "the completed job holds no scope"
    );
}

/// A management completion frees the dispatch scopes a worker took while the completion
/// waited for the job's row: the worker's take is played by the test, in a transaction holding
/// the row, committed once the completion waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_completion_frees_scopes_taken_while_it_waited() {
    use amboy::management::Manager as _;
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    queue.put(noop("held")).await.expect("put");
    let mut tx = queue.pool().begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {schema}.jobs WHERE id = 'held' FOR SHARE"
    )))
    .execute(&mut *tx)
    .await
    .expect("the row held");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.scopes (queue_group, scope, job_id, attempt) \
         SELECT queue_group, 's1', id, attempt FROM {schema}.jobs WHERE id = 'held'"
    )))
    .execute(&mut *tx)
    .await
    .expect("the scope taken");
    let manager = amboy::postgres::PostgresManager::for_queue(&queue);
    let completing = tokio::spawn(async move { manager.complete_job("held").await });
    amboy_tests::postgres::until_waiting_for_a_lock(queue.pool(), &schema, "done AS").await;
    tx.commit().await.expect("commit the take");
    tokio::time::timeout(LIMIT, completing)
        .await
        .expect("in time")
        .expect("no panic")
        .expect("completed");
    assert!(queue.get("held").await.expect("stored").status().completed);
    assert!(
        holders(&queue, "s1").await.is_empty(),
        "the completed job holds no scope"
    );
    queue
        .put(scoped("next", &["s1"], true))
        .await
        .expect("the scope is free");
}

/// Maintenance fails a pending job only for an edge whose latest attempt expired or was set
/// aside: an edge expired at attempt 0 and pending again at attempt 1 is still to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_judges_an_edge_by_its_latest_attempt() {
    let queue = idle(options()).await;
    queue.put(noop("again")).await.expect("put");
    queue.put(noop("gone")).await.expect("put");
    let waits = |id: &str, edge: &str| -> JobRef {
        let manager = MockDependency::new(State::Ready);
        manager.add_edge(edge).expect("edge");
        Arc::new(Noop {
            base: Base::with_id(id).with_dependency(manager),
        })
    };
    queue.put(waits("on-again", "again")).await.expect("put");
    queue.put(waits("on-gone", "gone")).await.expect("put");
    // Both edges expire; `again` is put again as attempt 1 (not due for an hour).
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET state = 4, finished = now() WHERE id IN ('again', 'gone'); \
             INSERT INTO {schema}.jobs (queue_group, id, attempt, state, job_type, priority, \
                 ready_at, mod_count, body) \
             SELECT queue_group, id, 1, 0, job_type, priority, now() + interval '1 hour', 0, body \
             FROM {schema}.jobs WHERE id = 'again'"
        ),
    )
    .await;
    // A maintenance pass fails the job whose only edge expired ...
    tokio::time::timeout(LIMIT, async {
        while !queue
            .get("on-gone")
            .await
            .is_ok_and(|job| job.status().completed)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("failed by maintenance");
    // ... and, in the same pass, leaves the other pending.
    let pending = queue.get("on-again").await.expect("stored");
    assert!(!pending.status().completed, "{:?}", pending.error());
}

/// A retry handler for the stale-retrying tests: records the jobs handed to it, refuses the
/// one named `refuse`, and when `stuck`, never answers a put (its buffer stays full; it says
/// it was entered).
#[derive(Default)]
struct TestHandler {
    jobs: std::sync::Mutex<Vec<String>>,
    refuse: Option<&'static str>,
    stuck: bool,
    entered: tokio::sync::Notify,
}

impl TestHandler {
    fn refusing(id: &'static str) -> Self {
        TestHandler {
            refuse: Some(id),
            ..TestHandler::default()
        }
    }

    fn stuck() -> Self {
        TestHandler {
            stuck: true,
            ..TestHandler::default()
        }
    }

    fn handed(&self, id: &str) -> bool {
        self.jobs.lock().unwrap().iter().any(|job| job == id)
    }
}

#[async_trait::async_trait]
impl amboy::RetryHandler for TestHandler {
    fn set_queue(&self, _queue: Arc<dyn amboy::RetryableQueue>) -> amboy::Result<()> {
        Ok(())
    }

    async fn start(&self) -> amboy::Result<()> {
        Ok(())
    }

    fn started(&self) -> bool {
        true
    }

    async fn put(&self, job: JobRef) -> amboy::Result<()> {
        self.entered.notify_one();
        if self.stuck {
            std::future::pending::<()>().await;
        }
        if self.refuse == Some(job.id()) {
            return Err(Error::invalid_job(job.id(), "not this one"));
        }
        self.jobs.lock().unwrap().push(job.id().to_owned());
        Ok(())
    }

    async fn close(&self) {}
}

/// A queue, not started, with `handler` as its retry handler and a runner that runs nothing.
fn with_handler(handler: Arc<TestHandler>) -> Arc<PostgresQueue> {
    let queue = queue(options());
    queue
        .set_retry_handler(handler)
        .expect("a new queue takes a handler");
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue
}

/// Makes job `id` retrying with a lock that lapsed `age` ago (an SQL interval), its owner
/// gone: a stale retrying job that maintenance hands to the retry handler.
async fn stale_retrying(queue: &PostgresQueue, id: &str, age: &str) {
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET state = 3, owner = 'gone', \
                 lock_ts = now() - interval '{age}' WHERE id = '{id}'"
        ),
    )
    .await;
}

/// A stale retrying job the handler refuses (for a reason of its own) does not keep the ones
/// after it from being handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_retrying_job_the_handler_refuses_holds_up_no_other() {
    let picky = Arc::new(TestHandler::refusing("refused"));
    let queue = with_handler(picky.clone());
    queue.put(noop("refused")).await.expect("put");
    queue.put(noop("taken")).await.expect("put");
    // The refused one is the older: first in line.
    stale_retrying(&queue, "refused", "2 days").await;
    stale_retrying(&queue, "taken", "1 day").await;
    queue.start().await.expect("start");
    tokio::time::timeout(LIMIT, async {
        while !picky.handed("taken") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the job after the refused one is handed over");
}

/// A retry handler with no room holds up neither maintenance nor the queue's closing: the
/// stale retrying job's hand-over waits, and `close` ends all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_retry_handler_does_not_hold_up_closing() {
    let stuck = Arc::new(TestHandler::stuck());
    let queue = with_handler(stuck.clone());
    queue.put(noop("retrying")).await.expect("put");
    stale_retrying(&queue, "retrying", "1 day").await;
    queue.start().await.expect("start");
    tokio::time::timeout(LIMIT, stuck.entered.notified())
        .await
        .expect("maintenance hands the job over");
    tokio::time::timeout(LIMIT, queue.close())
        .await
        .expect("closing does not wait for the handler's room");
}

/// A retrying job whose retry nobody processed and that cannot be decoded any more is set
/// aside by maintenance, as a claimed one is: left retrying, it would come first among the
/// stale retrying jobs at every pass for ever. The others go to the retry handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_retrying_job_that_cannot_be_decoded_is_set_aside() {
    let recorder = Arc::new(TestHandler::default());
    let queue = with_handler(recorder.clone());
    queue.put(scoped("bad", &["s1"], true)).await.expect("put");
    queue.put(noop("good")).await.expect("put");
    stale_retrying(&queue, "bad", "1 day").await;
    stale_retrying(&queue, "good", "1 day").await;
    let schema = &queue.options().schema;
    sql(
        queue.pool(),
        format!("UPDATE {schema}.jobs SET job_type = 'no-such-type' WHERE id = 'bad'"),
    )
    .await;
    queue.start().await.expect("start");
    tokio::time::timeout(LIMIT, async {
        loop {
            let state: i16 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT state FROM {schema}.jobs WHERE id = 'bad'"
            )))
            .fetch_one(queue.pool())
            .await
            .expect("the row");
            // Either outcome may come first.
            if state == 5 && recorder.handed("good") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bad set aside and good handed over by maintenance");
    assert!(!recorder.handed("bad"));
    let bad = listed(&queue, "bad").await;
    assert!(
        bad.status
            .errors
            .iter()
            .any(|e| e.contains("set aside without retrying") && e.contains("no-such-type")),
        "{:?}",
        bad.status.errors
    );
    // It holds no scope any more.
    queue
        .put(scoped("rival", &["s1"], true))
        .await
        .expect("the scope is free");
}

/// A job whose own `Deserialize` panics: it can be put, but never read back.
#[derive(Debug, serde::Serialize)]
struct PanicsOnDecode {
    base: Base,
}

impl<'de> serde::Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("this job cannot be read back")
    }
}

#[typetag::serde(name = "pg-test-panics-on-decode")]
#[async_trait::async_trait]
impl amboy::Job for PanicsOnDecode {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &amboy::JobContext) -> Result<(), amboy::JobError> {
        Ok(())
    }
}

/// A stored job whose decoding panics (its type's own `Deserialize`) is set aside like one
/// that cannot be decoded: the panic does not take the claimer down with it, and reads of the
/// job answer an error rather than panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_job_whose_decoding_panics_is_set_aside() {
    let queue = idle(options()).await;
    queue
        .put(Arc::new(PanicsOnDecode {
            base: Base::with_id("bomb"),
        }))
        .await
        .expect("it encodes");
    queue.put(noop("fine")).await.expect("put");
    assert_eq!(
        next(&queue).await.id(),
        "fine",
        "the bad job blocks nothing"
    );
    // The claimer lives on: a job put later is claimed too.
    queue.put(noop("later")).await.expect("put");
    assert_eq!(next(&queue).await.id(), "later");
    let error = queue.get("bomb").await.expect_err("cannot be decoded");
    assert!(
        error.to_string().contains("bomb") && error.to_string().contains("panicked"),
        "{error}"
    );
    let bomb = listed(&queue, "bomb").await;
    assert!(bomb.status.completed, "{:?}", bomb.status);
    assert!(
        bomb.status
            .errors
            .iter()
            .any(|e| e.contains("this job cannot be read back")),
        "{:?}",
        bomb.status.errors
    );
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.context.get("undecodable"), Some(&1.into()), "{stats}");
}

/// A job whose own `Serialize` panics once it is armed (by its run, say): it can be put, but
/// its final state cannot be stored.
#[derive(Debug, serde::Deserialize)]
struct PanicsOnEncode {
    base: Base,
    #[serde(skip)]
    armed: std::sync::atomic::AtomicBool,
}

impl PanicsOnEncode {
    fn new(base: Base) -> Arc<Self> {
        Arc::new(PanicsOnEncode {
            base,
            armed: Default::default(),
        })
    }
}

impl serde::Serialize for PanicsOnEncode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        assert!(
            !self.armed.load(std::sync::atomic::Ordering::SeqCst),
            "this job cannot be written back"
        );
        #[derive(serde::Serialize)]
        struct Fields<'a> {
            base: &'a Base,
        }
        Fields { base: &self.base }.serialize(serializer)
    }
}

#[typetag::serde(name = "pg-test-panics-on-encode")]
#[async_trait::async_trait]
impl amboy::Job for PanicsOnEncode {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &amboy::JobContext) -> Result<(), amboy::JobError> {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// A job whose final state cannot be encoded (its type's `Serialize` panics) completes, failed
/// with the reason, keeping the body it was stored with: the panic does not reach the worker
/// completing it (whose other completions in writing it would drop), and the job does not stay
/// running, to run again at every lock timeout. One that asked to retry does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_final_state_cannot_be_encoded_completes_failed() {
    let queue = idle(options()).await;
    queue
        .put(PanicsOnEncode::new(
            Base::with_id("bomb").with_scopes(["s1"]),
        ))
        .await
        .expect("unarmed, it encodes");
    queue
        .put(PanicsOnEncode::new(
            Base::with_id("retrier").with_retryable(true),
        ))
        .await
        .expect("put");
    for _ in 0..2 {
        let job = next(&queue).await;
        job.run(&amboy::JobContext::default())
            .await
            .expect("the run succeeds");
        if job.id() == "retrier" {
            job.base().metadata().retry_info.needs_retry = true;
        }
        queue.complete(&job).await.expect("completed");
        assert!(
            !job.base().metadata().retry_info.should_retry(),
            "{}: the job asks no retry any more",
            job.id()
        );
        assert!(
            job.error()
                .is_some_and(|e| e.to_string().contains("could not be stored")),
            "{:?}",
            job.error()
        );
    }
    for id in ["bomb", "retrier"] {
        let stored = queue.get(id).await.expect("the stored body decodes");
        let status = stored.status();
        assert!(status.completed && !status.in_progress, "{id}: {status:?}");
        assert!(
            status
                .errors
                .iter()
                .any(|e| e.contains("could not be stored")
                    && e.contains(&format!("'{id}'"))
                    && e.contains("encoding it panicked: this job cannot be written back")),
            "{id}: {:?}",
            status.errors
        );
        assert!(
            !stored.retry_info().should_retry(),
            "{id}: {:?}",
            stored.retry_info()
        );
    }
    let stats = queue.stats().await.expect("stats");
    assert_eq!(
        (stats.completed, stats.running, stats.pending),
        (2, 0, 0),
        "{stats}"
    );
    // It holds no scope any more.
    queue
        .put(scoped("rival", &["s1"], true))
        .await
        .expect("the scope is free");
}

/// Errors past the truncation threshold are cut when stored, as amboy cuts them, but the
/// stored job still says how many there were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_error_count_survives_the_truncation_of_its_errors() {
    let queue = idle(options()).await;
    let job = noop("failing");
    for n in 0..150 {
        job.add_error(&format_args!("{n:04} {}", "x".repeat(995)));
    }
    assert_eq!(job.status().error_count, 150);
    queue.put(job).await.expect("put");
    let stored = queue.get("failing").await.expect("stored");
    let status = stored.status();
    assert_eq!(status.errors.len(), 100, "truncated");
    assert_eq!(status.error_count, 150, "counted");
    let listed = listed(&queue, "failing").await;
    assert_eq!(listed.status.error_count, 150);
    // A completion stores the count its copy has.
    let job = next(&queue).await;
    assert_eq!(job.status().error_count, 150, "read back");
    queue.complete(&job).await.expect("complete");
    let stored = queue.get("failing").await.expect("stored");
    assert_eq!(stored.status().error_count, 150);
}

/// A job put in its stored form keeps what a put stores: its scopes (its enqueue scopes taken
/// at once) and its dependency's edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_put_in_its_stored_form_keeps_its_scopes_and_edges() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    queue.put(noop("first")).await.expect("put");
    let scoped_job = scoped("held", &["s1"], true);
    queue
        .put_interchange(JobInterchange::from_job(&*scoped_job).expect("encodes"))
        .await
        .expect("put in its stored form");
    let rival = scoped("rival", &["s1"], true);
    let error = queue
        .put_interchange(JobInterchange::from_job(&*rival).expect("encodes"))
        .await
        .expect_err("the scope is held");
    assert!(error.is_duplicate_scope(), "{error}");
    let error = queue
        .put(rival)
        .await
        .expect_err("held for a plain put too");
    assert!(error.is_duplicate_scope(), "{error}");
    let waiting = waiting_on("second", "first", 0);
    queue
        .put_interchange(JobInterchange::from_job(&*waiting).expect("encodes"))
        .await
        .expect("put in its stored form");
    let (scopes, edges): (Option<Vec<String>>, Option<Vec<String>>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT scopes FROM {schema}.jobs WHERE id = 'held'), \
                    (SELECT edges FROM {schema}.jobs WHERE id = 'second')"
        )))
        .fetch_one(queue.pool())
        .await
        .expect("the rows");
    assert_eq!(scopes.as_deref(), Some(&["s1".to_owned()][..]));
    assert_eq!(edges.as_deref(), Some(&["first".to_owned()][..]));
}

/// A stored row naming a scope twice (written before puts and saves took each once) is
/// claimed and handed out, not given back over and over; a save stores each scope once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_naming_a_scope_twice_is_claimed_and_saved_once() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    queue
        .put(scoped("old-row", &["d"], false))
        .await
        .expect("put");
    sql(
        queue.pool(),
        format!("UPDATE {schema}.jobs SET scopes = '{{d,d}}' WHERE id = 'old-row'"),
    )
    .await;
    let job = next(&queue).await;
    assert_eq!(job.id(), "old-row");
    assert_eq!(holders(&queue, "d").await, ["old-row"]);
    job.base().metadata().scopes = vec!["d".into(), "d".into()];
    queue.save(&job).await.expect("saved");
    let scopes: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT scopes FROM {schema}.jobs WHERE id = 'old-row'"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("scopes");
    assert_eq!(scopes, ["d"]);
}

/// A scope named twice is held once, as an enqueue scope and as a dispatch scope; a scope name
/// PostgreSQL cannot store is refused at put, naming the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_names_twice_are_held_once_and_bad_ones_refused() {
    let queue = idle(options()).await;
    queue
        .put(scoped("twice-enqueue", &["a", "a"], true))
        .await
        .expect("put");
    assert_eq!(holders(&queue, "a").await, ["twice-enqueue"]);
    queue
        .put(scoped("twice-dispatch", &["b", "b"], false))
        .await
        .expect("put");
    let mut taken: Vec<String> = Vec::new();
    for _ in 0..2 {
        taken.push(next(&queue).await.id().to_owned());
    }
    taken.sort();
    assert_eq!(taken, ["twice-dispatch", "twice-enqueue"]);
    assert_eq!(holders(&queue, "b").await, ["twice-dispatch"]);
    for (id, scope) in [("nul", "a\0b".to_owned()), ("long", "s".repeat(5000))] {
        let error = queue
            .put(scoped(id, &[scope.as_str()], false))
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, Error::InvalidJob { id: named, .. } if named == id),
            "{error}"
        );
    }
}

/// A batch insert that deadlocks with another put of the same IDs (in the other order) is not
/// every job's failure: once the other commits, the batch is inserted again and its jobs
/// reported duplicates. The other put is played by the test, in a transaction that inserts
/// the batch's second job, then, once the batch waits for it, its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_deadlocks_with_another_is_put_again() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    let mut other = queue.pool().begin().await.expect("begin");
    // The other put never looks for deadlocks first: the batch's session, after its
    // `deadlock_timeout`, finds this one and is cancelled.
    sqlx::raw_sql("SET LOCAL deadlock_timeout = '1min'")
        .execute(&mut *other)
        .await
        .expect("a superuser's setting");
    let insert = |id: &str| {
        format!(
            "INSERT INTO {schema}.jobs (queue_group, id, attempt, state, job_type, ready_at, \
                 body) \
             VALUES ('', '{id}', 0, 0, 'conformance-noop', now(), '{{\"job\":{{}}}}')"
        )
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(insert("y")))
        .execute(&mut *other)
        .await
        .expect("the other put's first row");
    let putting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.put_many(vec![noop("x"), noop("y")]).await }
    });
    amboy_tests::postgres::until_waiting_for_a_lock(queue.pool(), &schema, "INSERT INTO").await;
    // The other put now waits for the batch: a deadlock, which the batch detects.
    sqlx::raw_sql(sqlx::AssertSqlSafe(insert("x")))
        .execute(&mut *other)
        .await
        .expect("the other put's second row");
    other.commit().await.expect("the other put commits");
    let result = tokio::time::timeout(LIMIT, putting)
        .await
        .expect("in time")
        .expect("no panic");
    let Err(Error::Write(errors)) = result else {
        panic!("both jobs are duplicates: {result:?}");
    };
    assert_eq!(errors.errors().len(), 2, "{errors:?}");
    assert!(
        errors.errors().iter().all(Error::is_duplicate_job),
        "{errors:?}"
    );
}

/// A job named twice in one batch is a duplicate only once the first copy is stored: when the
/// first copy is not (a row the server refuses: a time out of its range), the second copy has
/// its error, not a duplicate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_in_a_batch_is_a_duplicate_only_if_the_first_copy_is_stored() {
    let queue = idle(options()).await;
    let ancient = chrono::NaiveDate::from_ymd_opt(-5000, 1, 1)
        .expect("a date")
        .and_hms_opt(0, 0, 0)
        .expect("a time")
        .and_utc();
    let refused: JobRef = Arc::new(Noop {
        base: Base::with_id("x").with_wait_until(ancient),
    });
    let result = queue.put_many(vec![refused, noop("x")]).await;
    let Err(Error::Write(errors)) = result else {
        panic!("neither copy is stored: {result:?}");
    };
    assert_eq!(errors.errors().len(), 2, "{errors:?}");
    assert!(
        errors
            .errors()
            .iter()
            .all(|error| !error.is_duplicate_job()),
        "{errors:?}"
    );
    assert!(queue.get("x").await.unwrap_err().is_job_not_found());
    // Stored, the first copy makes the second a duplicate.
    let result = queue.put_many(vec![noop("y"), noop("y")]).await;
    let Err(Error::Write(errors)) = result else {
        panic!("one copy is stored: {result:?}");
    };
    assert_eq!(errors.errors().len(), 1, "{errors:?}");
    assert!(errors.errors()[0].is_duplicate_job(), "{errors:?}");
    assert!(queue.get("y").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_put_in_a_transaction_exists_only_if_it_commits() {
    let queue = queue(options());
    queue.migrate().await.expect("schema");
    let mut tx = queue.pool().begin().await.expect("begin");
    queue
        .put_in(&mut tx, noop("rolled-back"))
        .await
        .expect("put in");
    tx.rollback().await.expect("rollback");
    assert!(
        queue
            .get("rolled-back")
            .await
            .unwrap_err()
            .is_job_not_found()
    );

    let mut tx = queue.pool().begin().await.expect("begin");
    queue
        .put_in(&mut tx, scoped("committed", &["tx-scope"], true))
        .await
        .expect("put in");
    assert!(
        queue.get("committed").await.unwrap_err().is_job_not_found(),
        "invisible before the commit"
    );
    tx.commit().await.expect("commit");
    assert!(queue.get("committed").await.is_ok());
    let error = queue
        .put(scoped("after", &["tx-scope"], true))
        .await
        .expect_err("the committed job holds its scope");
    assert!(error.is_duplicate_scope(), "{error}");
}

/// A job put in the caller's transaction, waiting on a running job, does not hold up the
/// heartbeat of the process running that job while the transaction stays open: the edge's
/// row is not locked until the caller commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_in_an_open_transaction_holds_up_no_heartbeat() {
    // A heartbeat every half second.
    let queue = idle(options().lock_timeout(Duration::from_secs(2))).await;
    let schema = queue.options().schema.clone();
    queue.put(noop("running")).await.expect("put");
    let running = next(&queue).await;
    let lock_of = || {
        let (pool, schema) = (queue.pool().clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<Utc>>(sqlx::AssertSqlSafe(format!(
                "SELECT lock_ts FROM {schema}.jobs WHERE id = 'running'"
            )))
            .fetch_one(&pool)
            .await
            .expect("the lock")
        }
    };
    let claimed_at = lock_of().await;
    let mut tx = queue.pool().begin().await.expect("begin");
    queue
        .put_in(&mut tx, waiting_on("waiting", "running", 0))
        .await
        .expect("put in");
    // The transaction stays open while the lock is refreshed.
    tokio::time::timeout(LIMIT, async {
        while lock_of().await <= claimed_at {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the heartbeat refreshes the running job's lock");
    tx.commit().await.expect("commit");
    queue
        .complete(&running)
        .await
        .expect("still this process's");
    assert_eq!(next(&queue).await.id(), "waiting");
}

/// Edges the put's own short transaction cannot mark are marked in the put's: one put earlier
/// in the caller's transaction (invisible outside it), or one whose row the caller's
/// transaction holds (the short transaction would wait for it for ever; it gives up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_the_callers_transaction_holds_are_marked_in_it() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    queue.put(noop("held")).await.expect("put");
    let mut tx = queue.pool().begin().await.expect("begin");
    queue.put_in(&mut tx, noop("fresh")).await.expect("put in");
    queue
        .put_in(&mut tx, waiting_on("on-fresh", "fresh", 0))
        .await
        .expect("put in");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.jobs SET priority = priority WHERE id = 'held'"
    )))
    .execute(&mut *tx)
    .await
    .expect("the caller holds the row");
    tokio::time::timeout(
        LIMIT,
        queue.put_in(&mut tx, waiting_on("on-held", "held", 0)),
    )
    .await
    .expect("the put does not wait for its own caller")
    .expect("put in");
    tx.commit().await.expect("commit");
    let marked: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, dependents FROM {schema}.jobs WHERE id IN ('fresh', 'held') ORDER BY id"
    )))
    .fetch_all(queue.pool())
    .await
    .expect("rows");
    assert_eq!(
        marked,
        [("fresh".to_owned(), true), ("held".to_owned(), true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_however_many_start_at_once() {
    let options = options();
    let queues: Vec<Arc<PostgresQueue>> = (0..8).map(|_| queue(options.clone())).collect();
    let results = futures::future::join_all(queues.iter().map(|queue| queue.migrate())).await;
    for result in results {
        result.expect("every process migrates");
    }
    let schema = &options.schema;
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {schema}.migrations ORDER BY version"
    )))
    .fetch_all(queues[0].pool())
    .await
    .expect("versions");
    assert_eq!(versions, [1]);
    // A schema newer than this binary is refused.
    sql(
        queues[0].pool(),
        format!("INSERT INTO {schema}.migrations (version) VALUES (99)"),
    )
    .await;
    let error = queue(options.clone()).migrate().await.expect_err("too new");
    assert!(error.to_string().contains("newer"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_elsewhere_wakes_an_idle_worker_without_polling() {
    // Polling once an hour: only the notification can wake the worker in time.
    let options = options().poll_interval(Duration::from_secs(3600));
    let worker = idle(options.clone()).await;
    let producer = queue(options.clone());
    let waiting = tokio::spawn({
        let worker = worker.clone();
        async move { worker.next().await }
    });
    // Once the worker listens.
    until_listening(producer.pool(), &options.schema).await;
    producer.put(noop("wake")).await.expect("put");
    let job = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("woken by the notification")
        .expect("joined")
        .expect("a job");
    assert_eq!(job.id(), "wake");
}

/// Scopes freed by another process's maintenance (a job holding one expired) wake an idle
/// worker waiting for a job that needs one, without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_freed_by_expiry_elsewhere_wake_an_idle_worker() {
    // Polling, and its own maintenance, once an hour: only a notification wakes the worker.
    let mut quiet = options().poll_interval(Duration::from_secs(3600));
    quiet.maintenance_interval = Duration::from_secs(3600);
    let worker = idle(quiet.clone()).await;
    let holder = Noop {
        base: Base::with_id("holder")
            .with_scopes(["s1"])
            .with_enqueue_all_scopes()
            .with_priority(10),
    };
    worker.put(Arc::new(holder)).await.expect("put");
    worker
        .put(scoped("waiting", &["s1"], false))
        .await
        .expect("put");
    // The holder's deadline passes before anyone takes it.
    let schema = &quiet.schema;
    sql(
        worker.pool(),
        format!(
            "UPDATE {schema}.jobs SET dispatch_by = now() - interval '1 minute' WHERE id = 'holder'"
        ),
    )
    .await;
    let waiting = tokio::spawn({
        let worker = worker.clone();
        async move { worker.next().await }
    });
    until_listening(worker.pool(), schema).await;
    // Another process, whose maintenance runs, expires the holder.
    let mut busy = quiet.clone();
    busy.maintenance_interval = Duration::from_millis(50);
    let elsewhere = idle(busy).await;
    let job = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("woken by the notification")
        .expect("joined")
        .expect("a job");
    assert_eq!(job.id(), "waiting");
    elsewhere.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_their_edges_and_unknown_edges_are_refused() {
    let queue = idle(options()).await;
    queue.put(noop("first")).await.expect("put");
    let manager = MockDependency::new(State::Ready);
    manager.add_edge("first").expect("edge");
    let then: JobRef = Arc::new(Noop {
        base: Base::with_id("then").with_dependency(manager),
    });
    queue.put(then).await.expect("put");
    let unknown = MockDependency::new(State::Ready);
    unknown.add_edge("nobody").expect("edge");
    let error = queue
        .put(Arc::new(Noop {
            base: Base::with_id("orphan").with_dependency(unknown),
        }))
        .await
        .expect_err("an unknown edge");
    assert!(
        error.to_string().contains("orphan") && error.to_string().contains("nobody"),
        "{error}"
    );

    let first = next(&queue).await;
    assert_eq!(first.id(), "first", "the edge runs first");
    // `then` is not claimable while its edge runs: a fresh next waits.
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await }
    });
    assert_eq!(queue.stats().await.expect("stats").pending, 1);
    queue.complete(&first).await.expect("complete");
    let then = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("in time")
        .expect("joined")
        .expect("a job");
    assert_eq!(then.id(), "then");

    // A manager that says Passed completes the job without running it: the claim for a
    // waiting worker completes it, and the worker goes on waiting.
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await }
    });
    let passed = MockDependency::new(State::Passed);
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("passed").with_dependency(passed),
        }))
        .await
        .expect("put");
    tokio::time::timeout(LIMIT, async {
        while !queue
            .get("passed")
            .await
            .is_ok_and(|job| job.status().completed)
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("completed without running");
    let passed = queue.get("passed").await.expect("stored");
    assert!(!waiting.is_finished(), "nothing was handed out");
    waiting.abort();
    assert!(
        passed.time_info().start.is_none(),
        "{:?}",
        passed.time_info()
    );
    assert!(passed.error().is_none(), "{:?}", passed.error());
}

/// A dependency manager whose `state` panics, asked on the claimer's thread or, when it says
/// it does blocking I/O, on a blocking thread; `None` panics when asked which.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PanickingManager {
    blocking: Option<bool>,
}

#[typetag::serde(name = "pg-test-panicking-manager")]
impl Manager for PanickingManager {
    fn state(&self) -> State {
        panic!("this manager cannot tell")
    }

    fn edges(&self) -> Vec<String> {
        Vec::new()
    }

    fn add_edge(&self, _id: &str) -> Result<(), amboy::dependency::DependencyError> {
        Ok(())
    }

    fn does_blocking_io(&self) -> bool {
        self.blocking.expect("this manager cannot tell either")
    }
}

/// A dependency manager that panics when asked is a manager that cannot be satisfied: its job
/// completes unrun with the reason, and the claimer goes on claiming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_manager_that_panics_fails_its_job_and_nothing_else() {
    let queue = idle(options()).await;
    for (id, blocking) in [
        ("inline", Some(false)),
        ("blocking", Some(true)),
        ("unsure", None),
    ] {
        queue
            .put(Arc::new(Noop {
                base: Base::with_id(id).with_dependency(PanickingManager { blocking }),
            }))
            .await
            .expect("put");
    }
    queue.put(noop("fine")).await.expect("put");
    assert_eq!(next(&queue).await.id(), "fine");
    queue.put(noop("later")).await.expect("put");
    assert_eq!(next(&queue).await.id(), "later", "the claimer goes on");
    for id in ["inline", "blocking", "unsure"] {
        let job = queue.get(id).await.expect("stored");
        assert!(job.status().completed, "{id}: {:?}", job.status());
        assert!(job.time_info().start.is_none(), "{id} never ran");
        let error = job.error().expect("the reason").to_string();
        assert!(
            error.contains("dependency unresolved: its manager panicked")
                && error.contains("this manager cannot tell"),
            "{id}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_older_than_the_retention_are_deleted() {
    let options = options().retention(Some(Duration::from_secs(60)));
    let queue = idle(options.clone()).await;
    queue.put(noop("old")).await.expect("put");
    queue.put(noop("recent")).await.expect("put");
    for _ in 0..2 {
        let job = next(&queue).await;
        queue.complete(&job).await.expect("complete");
    }
    let schema = &options.schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET finished = now() - interval '2 minutes' WHERE id = 'old'"
        ),
    )
    .await;
    tokio::time::timeout(LIMIT, async {
        while queue.get("old").await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("swept");
    assert!(
        queue.get("recent").await.is_ok(),
        "kept within the retention"
    );
}

/// One maintenance pass deletes every finished job past the retention, however many: a
/// queue finishing more jobs per pass than one statement deletes keeps up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pass_sweeps_every_old_job() {
    let mut options = options().retention(Some(Duration::from_secs(60)));
    // One pass, when the queue starts.
    options.maintenance_interval = Duration::from_secs(3600);
    let queue = queue(options.clone());
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue
        .put_many((0..2500).map(|n| noop(format!("old-{n}"))).collect())
        .await
        .expect("put");
    let schema = &options.schema;
    sql(
        queue.pool(),
        format!("UPDATE {schema}.jobs SET state = 2, finished = now() - interval '2 minutes'"),
    )
    .await;
    queue.start().await.expect("start");
    tokio::time::timeout(LIMIT, async {
        loop {
            let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.jobs"
            )))
            .fetch_one(queue.pool())
            .await
            .expect("count");
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("swept in one pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_of_zero_deletes_jobs_as_they_complete() {
    let options = options().retention(Some(Duration::ZERO));
    let queue = idle(options.clone()).await;
    queue.put(noop("done")).await.expect("put");
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("retried").with_retryable(true),
        }))
        .await
        .expect("put");
    queue.put(noop("taken-over")).await.expect("put");
    queue
        .put(scoped("holder", &["lane"], false))
        .await
        .expect("put");
    // Lower priorities: handed out once the jobs above completed.
    queue
        .put(waiting_on("after", "done", -1))
        .await
        .expect("put");
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("second")
                .with_scopes(["lane"])
                .with_priority(-2),
        }))
        .await
        .expect("put");
    let mut taken = std::collections::HashMap::new();
    for _ in 0..4 {
        let job = next(&queue).await;
        taken.insert(job.id().to_owned(), job);
    }
    let mut ids: Vec<&String> = taken.keys().collect();
    ids.sort();
    assert_eq!(ids, ["done", "holder", "retried", "taken-over"]);

    // A completion deletes the job: nothing of it is left.
    queue.complete(&taken["done"]).await.expect("complete");
    let gone = queue.get("done").await.expect_err("deleted");
    assert!(gone.is_job_not_found(), "{gone}");
    // A job that asks to retry is not finished: it stays, retrying.
    taken["retried"].base().metadata().retry_info.needs_retry = true;
    queue.complete(&taken["retried"]).await.expect("complete");
    let retrying = queue.get("retried").await.expect("kept while retrying");
    assert!(
        retrying.retry_info().should_retry(),
        "{:?}",
        retrying.retry_info()
    );
    // A completion that lost its lock deletes nothing.
    take_over(&queue, "taken-over").await;
    let refused = queue
        .complete(&taken["taken-over"])
        .await
        .expect_err("refused");
    assert!(refused.is_job_not_found(), "{refused}");
    let kept = queue.get("taken-over").await.expect("still stored");
    assert_eq!(kept.status().owner.as_deref(), Some("other"));
    // The deleted edge counts as done: its dependent runs. The scope the deleted holder held
    // is free: the job that needs it runs.
    queue.complete(&taken["holder"]).await.expect("complete");
    let mut rest = vec![
        next(&queue).await.id().to_owned(),
        next(&queue).await.id().to_owned(),
    ];
    rest.sort();
    assert_eq!(rest, ["after", "second"]);
    // Stored: the retrying job (counted completed, as amboy does) and three running.
    let stats = queue.stats().await.expect("stats");
    assert_eq!(
        (stats.total, stats.completed, stats.running, stats.retrying),
        (4, 1, 3, 1),
        "{stats}"
    );
    // The retry: the finished attempt is deleted as its next one is put.
    let next_attempt: JobRef = Arc::new(Noop {
        base: Base::with_id("retried").with_retryable(true),
    });
    next_attempt.base().metadata().retry_info.current_attempt = 1;
    queue
        .as_retryable()
        .expect("retryable")
        .complete_retrying_and_put(&taken["retried"], next_attempt)
        .await
        .expect("retried");
    let attempts: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT attempt FROM {}.jobs WHERE id = 'retried' ORDER BY attempt",
        options.schema
    )))
    .fetch_all(queue.pool())
    .await
    .expect("attempts");
    assert_eq!(attempts, [1], "the finished attempt was deleted");
}

/// A job waiting on `edge`, with the given priority.
fn waiting_on(id: &str, edge: &str, priority: i32) -> JobRef {
    let manager = MockDependency::new(State::Ready);
    manager.add_edge(edge).expect("edge");
    Arc::new(Noop {
        base: Base::with_id(id)
            .with_priority(priority)
            .with_dependency(manager),
    })
}

/// A job whose edge was deleted when it completed (a retention of zero) retries: its next
/// attempt counts the edge no longer stored as done, as its claim did. Put again, the job is a
/// duplicate, whatever became of its edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_edge_was_deleted_retries_and_is_a_duplicate_when_put_again() {
    let queue = idle(options().retention(Some(Duration::ZERO))).await;
    queue.put(noop("edge")).await.expect("put");
    let dependent = |attempt: u32| -> JobRef {
        let manager = MockDependency::new(State::Ready);
        manager.add_edge("edge").expect("edge");
        let job: JobRef = Arc::new(Noop {
            base: Base::with_id("dependent")
                .with_retryable(true)
                .with_priority(-1)
                .with_dependency(manager),
        });
        job.base().metadata().retry_info.current_attempt = attempt;
        job
    };
    queue.put(dependent(0)).await.expect("put");
    let edge = next(&queue).await;
    assert_eq!(edge.id(), "edge");
    queue.complete(&edge).await.expect("completed, and deleted");
    let first = next(&queue).await;
    assert_eq!(first.id(), "dependent", "its edge, gone, counts as done");
    let error = queue.put(dependent(0)).await.expect_err("put again");
    assert!(error.is_duplicate_job(), "{error}");
    // Only a retry counts a missing edge as done: a put of a later attempt does not.
    let error = queue.put(dependent(3)).await.expect_err("an unknown edge");
    assert!(error.to_string().contains("unknown job 'edge'"), "{error}");
    first.base().metadata().retry_info.needs_retry = true;
    queue.complete(&first).await.expect("completed, retrying");
    queue
        .as_retryable()
        .expect("retryable")
        .complete_retrying_and_put(&first, dependent(1))
        .await
        .expect("retried");
    let second = next(&queue).await;
    assert_eq!(
        (second.id(), second.retry_info().current_attempt),
        ("dependent", 1)
    );
}

/// A retry whose next attempt is stored finished at once (its edge expired) frees the enqueue
/// scopes the retry handed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_stored_finished_frees_the_scopes_it_was_handed() {
    let queue = idle(options()).await;
    let schema = queue.options().schema.clone();
    queue.put(noop("edge")).await.expect("put");
    let dependent = |attempt: u32| -> JobRef {
        let manager = MockDependency::new(State::Ready);
        manager.add_edge("edge").expect("edge");
        let job: JobRef = Arc::new(Noop {
            base: Base::with_id("dependent")
                .with_retryable(true)
                .with_scopes(["s1"])
                .with_enqueue_all_scopes()
                .with_dependency(manager),
        });
        job.base().metadata().retry_info.current_attempt = attempt;
        job
    };
    queue.put(dependent(0)).await.expect("put");
    assert_eq!(holders(&queue, "s1").await, ["dependent"]);
    // Attempt 0 retrying, and its edge expired meanwhile.
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET state = 3 WHERE id = 'dependent'; \
             UPDATE {schema}.jobs SET state = 4, finished = now() WHERE id = 'edge'"
        ),
    )
    .await;
    let first = queue.get("dependent").await.expect("stored");
    queue
        .as_retryable()
        .expect("retryable")
        .complete_retrying_and_put(&first, dependent(1))
        .await
        .expect("retried");
    let (state, failure): (i16, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT state, failure FROM {schema}.jobs WHERE id = 'dependent' AND attempt = 1"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("attempt 1");
    assert_eq!(state, 2, "stored finished: {failure:?}");
    assert!(holders(&queue, "s1").await.is_empty(), "it holds no scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_is_done_when_its_latest_attempt_completed() {
    let queue = idle(options()).await;
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("edge").with_retryable(true),
        }))
        .await
        .expect("put");
    // Attempt 0 fails and asks to retry; the retry handler completes it and puts attempt 1.
    let first = next(&queue).await;
    first.base().metadata().retry_info.needs_retry = true;
    queue.complete(&first).await.expect("completed, retrying");
    let second: JobRef = Arc::new(Noop {
        base: Base::with_id("edge").with_retryable(true),
    });
    second.base().metadata().retry_info.current_attempt = 1;
    queue
        .as_retryable()
        .expect("retryable")
        .complete_retrying_and_put(&first, second)
        .await
        .expect("retried");
    // A job waiting on the edge outranks a decoy, yet the decoy comes first: attempt 0 is
    // complete, but the latest attempt is not.
    queue
        .put(waiting_on("then", "edge", 10))
        .await
        .expect("put");
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("decoy").with_priority(5),
        }))
        .await
        .expect("put");
    let taken = next(&queue).await;
    assert_eq!(taken.id(), "decoy");
    let retried = next(&queue).await;
    assert_eq!(
        (retried.id(), retried.retry_info().current_attempt),
        ("edge", 1)
    );
    queue.complete(&taken).await.expect("complete");
    queue.complete(&retried).await.expect("complete");
    assert_eq!(next(&queue).await.id(), "then");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_deleted_by_the_retention_sweep_counts_as_done() {
    let options = options().retention(Some(Duration::from_secs(60)));
    let queue = idle(options.clone()).await;
    queue.put(noop("swept")).await.expect("put");
    let edge = next(&queue).await;
    queue.complete(&edge).await.expect("complete");
    // Another job still waits on a job that is there and complete: hold it while the edge
    // is swept.
    queue
        .put(waiting_on("after", "swept", 0))
        .await
        .expect("put");
    queue.put(noop("holder")).await.expect("put");
    let schema = &options.schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET finished = now() - interval '2 minutes' WHERE id = 'swept'"
        ),
    )
    .await;
    tokio::time::timeout(LIMIT, async {
        while queue.get("swept").await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("swept");
    let mut ids = vec![
        next(&queue).await.id().to_owned(),
        next(&queue).await.id().to_owned(),
    ];
    ids.sort();
    assert_eq!(ids, ["after", "holder"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_aside_edge_fails_its_dependent_before_the_sweep_deletes_it() {
    let options = options().retention(Some(Duration::from_secs(60)));
    let queue = idle(options.clone()).await;
    queue.put(noop("bad-edge")).await.expect("put");
    queue
        .put(waiting_on("dependent", "bad-edge", 0))
        .await
        .expect("put");
    queue.put(noop("recent")).await.expect("put");
    // The edge was set aside long ago, and its dependent is still pending: maintenance fails
    // the dependent before its sweep deletes the edge (a claim counts an edge no longer
    // stored as done; the sweep also keeps such an edge while a pending job waits on it).
    let schema = &options.schema;
    sql(
        queue.pool(),
        format!(
            "UPDATE {schema}.jobs SET state = 5, finished = now() - interval '2 minutes', \
             failure = 'unknown job type' WHERE id = 'bad-edge'; \
             UPDATE {schema}.jobs SET finished = now() - interval '2 minutes', state = 2 \
             WHERE id = 'recent'"
        ),
    )
    .await;
    // Maintenance fails the dependent, then the sweep deletes both old finished jobs.
    // (`get` refuses a set-aside job: ask the table.)
    let rows = format!("SELECT count(*) FROM {schema}.jobs WHERE id IN ('bad-edge', 'recent')");
    tokio::time::timeout(LIMIT, async {
        loop {
            let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(rows.clone()))
                .fetch_one(queue.pool())
                .await
                .expect("count");
            if left == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("swept");
    let dependent = queue.get("dependent").await.expect("stored");
    assert!(dependent.status().completed, "failed, not run");
    assert!(
        dependent
            .error()
            .is_some_and(|error| error.message().contains("bad-edge")),
        "{:?}",
        dependent.error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_checked() {
    let error = PostgresQueue::new(PostgresQueueOptions::default()).expect_err("no database");
    assert!(error.to_string().contains("pool or a URL"), "{error}");
    let error = PostgresQueue::new(options().schema("Bad-Name; DROP")).expect_err("bad schema");
    assert!(error.to_string().contains("schema name"), "{error}");
    let mut zero = options();
    zero.claim_batch = 0;
    assert!(matches!(PostgresQueue::new(zero), Err(Error::Invalid(_))));
    let expired_deadline = Base::with_id("late").with_dispatch_by(Utc::now() - TimeDelta::hours(1));
    let queue = idle(options()).await;
    queue
        .put(Arc::new(Noop {
            base: expired_deadline,
        }))
        .await
        .expect("put");
    tokio::time::timeout(LIMIT, async {
        while queue.stats().await.expect("stats").expired == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("set aside as expired");
    assert!(queue.get("late").await.expect("kept").status().expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_reaches_next_as_a_transient_error() {
    let queue = idle(options()).await;
    queue.put(noop("before")).await.expect("put");
    assert_eq!(next(&queue).await.id(), "before");
    // The tables vanish under the running queue: claims fail.
    let schema = &queue.options().schema;
    sql(queue.pool(), format!("DROP SCHEMA {schema} CASCADE")).await;
    let error = tokio::time::timeout(LIMIT, queue.next())
        .await
        .expect("an answer in time")
        .expect_err("the claim failed");
    assert!(!error.is_closed(), "transient, not closed: {error}");
    assert!(error.to_string().contains("claim"), "{error}");
    queue.close().await;
    let error = queue.next().await.expect_err("closed");
    assert!(error.is_closed(), "{error}");
}

/// Single puts made at the same time go in together (one statement for those queued while
/// another runs), and each gets its own result: the duplicate among them fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_puts_each_get_their_own_result() {
    let queue = queue(options());
    queue.put(noop("taken")).await.expect("put");
    let puts = (0..300).map(|n| {
        let queue = queue.clone();
        let id = if n == 150 {
            "taken".to_owned()
        } else {
            format!("single-{n}")
        };
        async move { (id.clone(), queue.put(noop(&id)).await) }
    });
    let results = futures::future::join_all(puts).await;
    let failed: Vec<&(String, amboy::Result<()>)> = results
        .iter()
        .filter(|(_, result)| result.is_err())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (id, error) = failed[0];
    assert_eq!(id, "taken");
    let error = error.as_ref().unwrap_err();
    assert!(
        error.is_duplicate_job() && error.to_string().contains("taken"),
        "{error}"
    );
    assert_eq!(queue.stats().await.expect("stats").total, 300);
    for n in [0, 149, 151, 299] {
        queue.get(&format!("single-{n}")).await.expect("stored");
    }
}

/// A put dropped while it waits for its statement leaves nobody waiting: later puts go in,
/// and the dropped one's job is stored or not, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_single_put_blocks_no_other() {
    use futures::FutureExt as _;
    let queue = queue(options());
    queue.migrate().await.expect("schema");
    for n in 0..20 {
        let id = format!("dropped-{n}");
        let _ = queue.put(noop(&id)).now_or_never();
    }
    tokio::time::timeout(LIMIT, queue.put(noop("after")))
        .await
        .expect("not stuck behind the dropped puts")
        .expect("put");
    queue.get("after").await.expect("stored");
    let total = queue.stats().await.expect("stats").total;
    assert!((1..=21).contains(&total), "{total}");
    for n in 0..20 {
        if let Ok(job) = queue.get(&format!("dropped-{n}")).await {
            assert_eq!(job.id(), format!("dropped-{n}"));
        }
    }
}

/// A put that one job spoils (an ID too long for the index, refused before the statement)
/// spoils nothing else of the batch its put joined; two concurrent puts of one ID: one is a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_duplicate_single_put_fails_alone() {
    let queue = queue(options());
    queue.migrate().await.expect("schema");
    let long = "k".repeat(3200);
    let puts = (0..20).map(|n| {
        let queue = queue.clone();
        let id = if n == 7 {
            long.clone()
        } else {
            format!("fine-{n}")
        };
        async move { (n, queue.put(noop(&id)).await) }
    });
    for (n, result) in futures::future::join_all(puts).await {
        if n == 7 {
            let error = result.expect_err("too long");
            assert!(error.to_string().contains("3200 bytes"), "{error}");
        } else {
            result.unwrap_or_else(|error| panic!("fine-{n}: {error}"));
        }
    }
    let nul = queue.put(noop("nul\0byte")).await.expect_err("NUL");
    assert!(nul.to_string().contains("NUL"), "{nul}");
    let twice = futures::future::join_all((0..2).map(|_| queue.put(noop("same")))).await;
    assert_eq!(
        twice.iter().filter(|result| result.is_ok()).count(),
        1,
        "{twice:?}"
    );
    assert!(
        twice
            .iter()
            .any(|result| result.as_ref().is_err_and(|error| error.is_duplicate_job()))
    );
    assert_eq!(queue.stats().await.expect("stats").total, 20);
}

/// A batch holding one ID twice stores it once and reports the second as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_twice_in_one_batch_is_stored_once() {
    let queue = queue(options());
    let error = queue
        .put_many(vec![noop("x"), noop("x"), noop("y")])
        .await
        .expect_err("a duplicate");
    assert!(error.is_duplicate_job(), "{error}");
    assert_eq!(queue.stats().await.expect("stats").total, 2);
}
