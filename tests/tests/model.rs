//! A model-based (state-machine) test of the in-memory queues.
//!
//! proptest generates sequences of operations — puts (new IDs, duplicate IDs, scopes, enqueue
//! scopes, a `wait_until` far ahead, a `dispatch_by` in the past, invalid timing), `next`,
//! `save`, `complete` of dispatched, pending and completed jobs, and for the serializable queue
//! retries (`complete_retrying_and_put` with the next attempt built as the retry handler builds
//! it, or `complete_retrying`). The test drives the queue by hand through an idle runner and,
//! after every step, checks the queue against a model of what must be true:
//!
//! * no job is lost: the stats count every accepted attempt as pending, running, completed or
//!   expired, and `get` finds every job that has not expired, in the state the model says;
//! * nothing is completed twice nor handed out twice: `next` only hands out a pending job that
//!   may run now, and hands one out whenever one may;
//! * the stats agree with the model exactly (pending, running, completed, retrying, expired,
//!   total, `is_complete`), and `results` and `job_info` list what the model says;
//! * the dispatcher keeps the lock of every running job alive, and of no other job;
//! * scopes are exclusive: no two running jobs share a scope, a job never runs while another
//!   holds one of its scopes, a put whose enqueue scope another live job holds fails with a
//!   duplicate-scope error, and a scope nobody holds any longer is free again.
//!
//! Apart from the shuffled queue's choices (which the model does not predict), only time could
//! make this nondeterministic, so the runtime's clock is paused (a `next` that finds nothing
//! returns after a virtual wait), `wait_until` is only ever an hour ahead (such jobs never leave
//! the timer heap during a case) and `dispatch_by` only an hour ago or ahead. Which stale jobs a
//! `next` drops on its way is observed rather than predicted; once a `next` found nothing, every
//! stale job must have been dropped.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amboy::local::{
    LimitedSizeQueue, LimitedSizeSerializableQueue, Line, LocalQueue, PriorityQueue, ShuffledQueue,
};
use amboy::{Base, JobRef, JobStatusInfo, JobTimeInfo, Queue, QueueStats};
use amboy_tests::cases::IdleRunner;
use amboy_tests::jobs::Noop;
use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

/// Large enough that a put never waits for room and no completed job is forgotten.
const CAPACITY: usize = 1024;
/// The scopes jobs draw from: few, so that they collide.
const SCOPES: [&str; 3] = ["red", "green", "blue"];
/// How long a `next` is given (virtual time: the runtime's clock is paused).
const NEXT_WAIT: Duration = Duration::from_millis(50);
/// The longest operation sequence.
const MAX_OPS: usize = 60;
/// Cases per queue.
const CASES: u32 = 256;

type Checked<T = ()> = Result<T, TestCaseError>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($arg)+)));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(TestCaseError::fail(format!(
                "{}: queue says {:?}, model says {:?}",
                format!($($arg)+),
                left,
                right
            )));
        }
    }};
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// The queue under test.
/// The jobs whose locks a queue keeps alive: how many, and whether a given one is among them.
struct Heartbeat {
    count: Box<dyn Fn() -> usize + Send + Sync>,
    covers: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fifo,
    Priority,
    Shuffled,
    Serializable,
}

impl Kind {
    /// A queue of this kind, and what keeps the locks of its running jobs alive.
    fn build(self) -> (Arc<dyn Queue>, Heartbeat) {
        fn local<L: Line>(queue: Arc<LocalQueue<L>>) -> (Arc<dyn Queue>, Heartbeat) {
            // Queues holding the jobs themselves refresh the jobs running there.
            let (counted, asked) = (queue.clone(), queue.clone());
            let heartbeat = Heartbeat {
                count: Box::new(move || counted.dispatched()),
                covers: Box::new(move |id| asked.is_dispatched(id)),
            };
            (queue, heartbeat)
        }
        match self {
            Kind::Fifo => local(LimitedSizeQueue::new(CAPACITY)),
            Kind::Priority => local(PriorityQueue::new(CAPACITY)),
            Kind::Shuffled => local(ShuffledQueue::new(CAPACITY)),
            Kind::Serializable => {
                let queue = LimitedSizeSerializableQueue::new(CAPACITY);
                // Queues of copies track the copies their workers run.
                let (counted, asked) = (queue.dispatcher().clone(), queue.dispatcher().clone());
                let heartbeat = Heartbeat {
                    count: Box::new(move || counted.len()),
                    covers: Box::new(move |id| (0..16).any(|n| asked.is_dispatched(id, n))),
                };
                (queue, heartbeat)
            }
        }
    }

    /// Whether the queue stores copies (and retries) rather than the jobs themselves.
    fn copies(self) -> bool {
        self == Kind::Serializable
    }
}

/// When a job may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// At once.
    Now,
    /// `wait_until` an hour ahead: it stays in the timer heap.
    WaitFar,
    /// `dispatch_by` an hour ago: dropped as expired when its turn comes.
    DispatchPast,
    /// `dispatch_by` an hour ahead: runs as usual.
    DispatchFar,
    /// `wait_until` after `dispatch_by`: refused.
    Invalid,
}

/// Which of its scopes a job takes when it is put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enqueue {
    None,
    All,
    First,
}

/// Which of the candidates an operation picks: the first, once shrunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pick(u16);

impl Pick {
    fn index(self, len: usize) -> usize {
        usize::from(self.0) % len
    }
}

fn pick() -> impl Strategy<Value = Pick> {
    any::<u16>().prop_map(Pick)
}

#[derive(Debug, Clone)]
struct PutOp {
    /// Reuse an ID seen before (a duplicate unless that job expired).
    duplicate: Option<Pick>,
    /// Indices into [`SCOPES`].
    scopes: Vec<usize>,
    enqueue: Enqueue,
    timing: Timing,
    priority: i32,
    /// For the serializable queue: the job is retryable (for a new ID).
    retryable: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Put(PutOp),
    Next,
    /// Save a job the test holds (any state).
    Save(Pick),
    /// Complete a running job.
    Complete(Pick),
    /// Complete a pending job taken with `get`.
    CompletePending(Pick),
    /// Complete a completed job again.
    CompleteAgain(Pick),
    /// A running retryable job asks to retry and is completed.
    AskRetry(Pick),
    /// The retry of a retrying job is processed: the next attempt is put with
    /// `complete_retrying_and_put` (`next`), or the job is finished with `complete_retrying`.
    /// `handler_save`: first lock and save the old attempt, as the retry handler does.
    Retry {
        pick: Pick,
        next: bool,
        handler_save: bool,
    },
}

fn put_op(retryable: bool) -> impl Strategy<Value = PutOp> {
    let scopes = prop_oneof![
        2 => Just(Vec::new()),
        3 => proptest::sample::subsequence(vec![0, 1, 2], 1..=2),
    ];
    let enqueue = prop_oneof![
        2 => Just(Enqueue::None),
        1 => Just(Enqueue::All),
        1 => Just(Enqueue::First),
    ];
    let timing = prop_oneof![
        8 => Just(Timing::Now),
        1 => Just(Timing::WaitFar),
        2 => Just(Timing::DispatchPast),
        1 => Just(Timing::DispatchFar),
        1 => Just(Timing::Invalid),
    ];
    (
        proptest::option::weighted(0.2, pick()),
        scopes,
        enqueue,
        timing,
        0..3i32,
        proptest::bool::weighted(if retryable { 0.6 } else { 0.0 }),
    )
        .prop_map(
            |(duplicate, scopes, enqueue, timing, priority, retryable)| PutOp {
                duplicate,
                scopes,
                enqueue,
                timing,
                priority,
                retryable,
            },
        )
}

fn op(retryable: bool) -> BoxedStrategy<Op> {
    let common = prop_oneof![
        5 => put_op(retryable).prop_map(Op::Put),
        5 => Just(Op::Next),
        1 => pick().prop_map(Op::Save),
        3 => pick().prop_map(Op::Complete),
        1 => pick().prop_map(Op::CompletePending),
        1 => pick().prop_map(Op::CompleteAgain),
    ];
    if !retryable {
        return common.boxed();
    }
    prop_oneof![
        16 => common,
        3 => pick().prop_map(Op::AskRetry),
        3 => (pick(), any::<bool>(), any::<bool>()).prop_map(|(pick, next, handler_save)| {
            Op::Retry {
                pick,
                next,
                handler_save,
            }
        }),
    ]
    .boxed()
}

fn ops(retryable: bool) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(retryable), 1..=MAX_OPS)
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Accepted, not dispatched (in the line, the timer heap or parked beside a scope).
    Pending,
    /// Dispatched by `next` and not completed.
    Running,
    /// Completed (and, for a retryable job, not waiting for another attempt).
    Completed,
    /// Completed and asking to retry: its next attempt has not been put yet.
    Retrying,
    /// Dropped because its `dispatch_by` passed.
    Expired,
}

/// One accepted attempt of a job.
struct Entity {
    id: String,
    attempt: u32,
    retryable: bool,
    scopes: Vec<String>,
    /// The scopes taken when it was put.
    enqueue: Vec<String>,
    priority: i32,
    timing: Timing,
    /// Order of acceptance.
    seq: usize,
    state: State,
    /// A save while pending took all of its scopes.
    saved: bool,
    /// Completed from outside while pending by a queue of copies: the stored record's lock was
    /// never taken, but its modification time is fresh, so the lock rule refuses every copy
    /// until the lock timeout passes.
    unowned: bool,
    /// The job put (for the local queues, the very job the queue holds).
    put: JobRef,
    /// The job `next` handed out.
    running: Option<JobRef>,
}

impl Entity {
    /// The scopes the job holds now.
    fn holds(&self) -> &[String] {
        match self.state {
            State::Pending if self.saved => &self.scopes,
            State::Pending => &self.enqueue,
            State::Running => &self.scopes,
            // A retrying job keeps its enqueue scopes for its next attempt.
            State::Retrying => &self.enqueue,
            State::Completed | State::Expired => &[],
        }
    }

    fn live(&self) -> bool {
        self.state != State::Expired
    }

    fn same_key(&self, id: &str, attempt: u32) -> bool {
        self.id == id && self.attempt == attempt
    }
}

impl fmt::Debug for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{} {:?}", self.id, self.attempt, self.state)?;
        if !self.scopes.is_empty() {
            write!(f, " scopes={:?}", self.scopes)?;
        }
        if !self.enqueue.is_empty() {
            write!(f, " enqueue={:?}", self.enqueue)?;
        }
        if self.saved {
            write!(f, " saved")?;
        }
        if self.unowned {
            write!(f, " unowned")?;
        }
        if self.timing != Timing::Now {
            write!(f, " {:?}", self.timing)?;
        }
        if self.priority != 0 {
            write!(f, " p{}", self.priority)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Model {
    entities: Vec<Entity>,
    /// Every ID generated, with whether its jobs are retryable.
    ids: Vec<(String, bool)>,
    seq: usize,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entities).finish()
    }
}

impl Model {
    fn count(&self, state: State) -> usize {
        self.entities.iter().filter(|e| e.state == state).count()
    }

    /// Whether an entity other than `except` holds `scope`.
    fn held_by_other(&self, except: Option<usize>, scope: &str) -> bool {
        self.entities
            .iter()
            .enumerate()
            .any(|(i, e)| Some(i) != except && e.holds().iter().any(|s| s == scope))
    }

    /// Whether `next` may hand the entity out now.
    fn ready(&self, i: usize) -> bool {
        let e = &self.entities[i];
        e.state == State::Pending
            && matches!(e.timing, Timing::Now | Timing::DispatchFar)
            && e.scopes.iter().all(|s| !self.held_by_other(Some(i), s))
    }

    fn ready_set(&self) -> Vec<usize> {
        (0..self.entities.len())
            .filter(|&i| self.ready(i))
            .collect()
    }

    fn pick(&self, index: Pick, filter: impl Fn(&Entity) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.entities.len())
            .filter(|&i| filter(&self.entities[i]))
            .collect();
        (!candidates.is_empty()).then(|| candidates[index.index(candidates.len())])
    }

    fn live_with_key(&self, id: &str, attempt: u32) -> Option<usize> {
        self.entities
            .iter()
            .position(|e| e.live() && e.same_key(id, attempt))
    }

    /// The latest live attempt of `id`, which `get` returns.
    fn latest(&self, id: &str) -> Option<usize> {
        (0..self.entities.len())
            .filter(|&i| self.entities[i].live() && self.entities[i].id == id)
            .max_by_key(|&i| self.entities[i].attempt)
    }
}

// ---------------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------------

struct Machine {
    kind: Kind,
    queue: Arc<dyn Queue>,
    /// What keeps the locks of running jobs alive.
    heartbeat: Heartbeat,
    model: Model,
}

fn fail(what: impl fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

fn scope_names(indices: &[usize]) -> Vec<String> {
    indices.iter().map(|&i| SCOPES[i].to_owned()).collect()
}

fn build_job(id: &str, put: &PutOp, retryable: bool) -> JobRef {
    let hour = TimeDelta::hours(1);
    let scopes = scope_names(&put.scopes);
    let mut base = Base::with_id(id)
        .with_scopes(scopes.clone())
        .with_priority(put.priority)
        .with_retryable(retryable);
    base = match put.enqueue {
        Enqueue::None => base,
        Enqueue::All => base.with_enqueue_all_scopes(),
        Enqueue::First => base.with_enqueue_scopes(scopes.first().cloned()),
    };
    let now = Utc::now();
    base = match put.timing {
        Timing::Now => base,
        Timing::WaitFar => base.with_wait_until(now + hour),
        Timing::DispatchPast => base.with_dispatch_by(now - hour),
        Timing::DispatchFar => base.with_dispatch_by(now + hour),
        Timing::Invalid => base
            .with_wait_until(now + hour * 2)
            .with_dispatch_by(now + hour),
    };
    Arc::new(Noop { base })
}

fn enqueue_scopes(put: &PutOp) -> Vec<String> {
    let scopes = scope_names(&put.scopes);
    match put.enqueue {
        Enqueue::None => Vec::new(),
        Enqueue::All => scopes,
        Enqueue::First => scopes.into_iter().take(1).collect(),
    }
}

/// The retry handler's `prepare_next_attempt`: turns a copy of an attempt into the next one
/// (the jobs here set no retry offsets, so the next attempt keeps the old absolute times).
fn prepare_next_attempt(next: &JobRef, attempt: u32) {
    let mut meta = next.base().metadata();
    meta.retry_info.needs_retry = false;
    meta.retry_info.current_attempt = attempt;
    meta.retry_info.start = None;
    meta.retry_info.end = None;
    meta.time_info = JobTimeInfo {
        wait_until: meta.time_info.wait_until,
        dispatch_by: meta.time_info.dispatch_by,
        max_time: meta.time_info.max_time,
        ..JobTimeInfo::default()
    };
    meta.status = JobStatusInfo::default();
}

fn attempt_of(job: &JobRef) -> u32 {
    job.base().metadata().retry_info.current_attempt
}

impl Machine {
    async fn new(kind: Kind) -> Checked<Self> {
        let (queue, heartbeat) = kind.build();
        queue
            .set_runner(Arc::new(IdleRunner::default()))
            .map_err(fail)?;
        queue.start().await.map_err(fail)?;
        Ok(Machine {
            kind,
            queue,
            heartbeat,
            model: Model::default(),
        })
    }

    /// The job the test holds for an entity: the job `next` handed out while it runs; for a
    /// queue of copies, a fresh copy otherwise (the copy that ran may be behind the store once
    /// a retry changed it; the job put, once it expired); for the local queues, the job itself.
    async fn handle(&self, i: usize) -> Checked<JobRef> {
        let e = &self.model.entities[i];
        if let (State::Running, Some(running)) = (e.state, &e.running) {
            return Ok(running.clone());
        }
        if !self.kind.copies() || !e.live() {
            return Ok(e.put.clone());
        }
        let got = if e.retryable {
            let retryable = self.queue.as_retryable().expect("a retryable queue");
            retryable.get_attempt(&e.id, e.attempt).await
        } else {
            self.queue.get(&e.id).await
        };
        got.map_err(|error| fail(format!("get {e:?}: {error}")))
    }

    async fn apply(&mut self, op: &Op) -> Checked {
        match *op {
            Op::Put(ref put) => self.put(put).await,
            Op::Next => self.next().await,
            Op::Save(pick) => self.save(pick).await,
            Op::Complete(pick) => {
                let Some(i) = self.model.pick(pick, |e| e.state == State::Running) else {
                    return Ok(());
                };
                let job = self.handle(i).await?;
                self.queue
                    .complete(&job)
                    .await
                    .map_err(|error| fail(format!("complete a running job: {error}")))?;
                self.model.entities[i].state = State::Completed;
                Ok(())
            }
            Op::CompletePending(pick) => {
                let Some(i) = self.model.pick(pick, |e| e.state == State::Pending) else {
                    return Ok(());
                };
                let e = &self.model.entities[i];
                let job = self
                    .queue
                    .get(&e.id)
                    .await
                    .map_err(|error| fail(format!("get a pending job: {error}")))?;
                self.queue
                    .complete(&job)
                    .await
                    .map_err(|error| fail(format!("complete a pending job: {error}")))?;
                let e = &mut self.model.entities[i];
                e.state = State::Completed;
                e.unowned = self.kind.copies();
                Ok(())
            }
            Op::CompleteAgain(pick) => {
                let Some(i) = self.model.pick(pick, |e| {
                    matches!(e.state, State::Completed | State::Retrying)
                }) else {
                    return Ok(());
                };
                let job = self.handle(i).await?;
                let result = self.queue.complete(&job).await;
                let e = &self.model.entities[i];
                if e.unowned {
                    let error = result.err().ok_or_else(|| {
                        fail(format!("completing {e:?} again passed the lock rule"))
                    })?;
                    ensure!(
                        error.is_job_not_found(),
                        "completing {e:?} again failed with the wrong error: {error}"
                    );
                    return Ok(());
                }
                result.map_err(|error| fail(format!("complete {e:?} again: {error}")))
            }
            Op::AskRetry(pick) => {
                let Some(i) = self
                    .model
                    .pick(pick, |e| e.state == State::Running && e.retryable)
                else {
                    return Ok(());
                };
                let job = self.handle(i).await?;
                job.base().add_retryable_error("asks to retry");
                self.queue
                    .complete(&job)
                    .await
                    .map_err(|error| fail(format!("complete a job asking to retry: {error}")))?;
                self.model.entities[i].state = State::Retrying;
                Ok(())
            }
            Op::Retry {
                pick,
                next,
                handler_save,
            } => self.retry(pick, next, handler_save).await,
        }
    }

    async fn put(&mut self, put: &PutOp) -> Checked {
        let (id, retryable) = match &put.duplicate {
            Some(index) if !self.model.ids.is_empty() => {
                self.model.ids[index.index(self.model.ids.len())].clone()
            }
            _ => {
                let id = format!("job-{}", self.model.ids.len());
                let retryable = self.kind.copies() && put.retryable;
                self.model.ids.push((id.clone(), retryable));
                (id, retryable)
            }
        };
        let job = build_job(&id, put, retryable);
        let enqueue = enqueue_scopes(put);
        let result = self.queue.put(job.clone()).await;
        if put.timing == Timing::Invalid {
            let error = result
                .err()
                .ok_or_else(|| fail("a job with wait_until after dispatch_by was accepted"))?;
            ensure!(
                !error.is_duplicate_job(),
                "an invalid job was refused as a duplicate: {error}"
            );
            return Ok(());
        }
        if let Some(other) = self.model.live_with_key(&id, 0) {
            let other = &self.model.entities[other];
            let error = result
                .err()
                .ok_or_else(|| fail(format!("a duplicate of {other:?} was accepted")))?;
            ensure!(
                error.is_duplicate_job(),
                "a duplicate ID was refused with the wrong error: {error}"
            );
            return Ok(());
        }
        if let Some(scope) = enqueue
            .iter()
            .find(|scope| self.model.held_by_other(None, scope))
        {
            let error = result.err().ok_or_else(|| {
                fail(format!(
                    "a job taking the held scope '{scope}' at enqueue was accepted"
                ))
            })?;
            ensure!(
                error.is_duplicate_scope(),
                "a job taking a held enqueue scope was refused with the wrong error: {error}"
            );
            return Ok(());
        }
        result.map_err(|error| fail(format!("put refused: {error}")))?;
        self.model.seq += 1;
        self.model.entities.push(Entity {
            id,
            attempt: 0,
            retryable,
            scopes: scope_names(&put.scopes),
            enqueue,
            priority: put.priority,
            timing: put.timing,
            seq: self.model.seq,
            state: State::Pending,
            saved: false,
            unowned: false,
            put: job,
            running: None,
        });
        Ok(())
    }

    async fn next(&mut self) -> Checked {
        let got = tokio::time::timeout(NEXT_WAIT, self.queue.next()).await;
        // The stale jobs `next` met on its way were dropped: observe which.
        self.observe_expired(true).await?;
        let job = match got {
            Ok(None) => return Err(fail("next returned None on an open queue")),
            Err(_) => {
                let ready: Vec<&Entity> = self
                    .model
                    .ready_set()
                    .into_iter()
                    .map(|i| &self.model.entities[i])
                    .collect();
                ensure!(
                    ready.is_empty(),
                    "next found nothing, but these jobs may run: {ready:?}"
                );
                let stale: Vec<&Entity> = self
                    .model
                    .entities
                    .iter()
                    .filter(|e| e.state == State::Pending && e.timing == Timing::DispatchPast)
                    .collect();
                ensure!(
                    stale.is_empty(),
                    "next found nothing, but these stale jobs were not dropped: {stale:?}"
                );
                return Ok(());
            }
            Ok(Some(job)) => job,
        };
        let attempt = attempt_of(&job);
        let i = self
            .model
            .entities
            .iter()
            .rposition(|e| e.same_key(job.id(), attempt))
            .ok_or_else(|| fail(format!("next handed out an unknown job {}", job.id())))?;
        let e = &self.model.entities[i];
        ensure!(
            e.state == State::Pending,
            "next handed out {e:?}, which is not pending (handed out twice?)"
        );
        ensure!(
            self.model.ready(i),
            "next handed out {e:?}, which may not run now"
        );
        // Order: a job without scopes is never parked, so it stays ahead of every job put
        // after it; priorities come first on the priority queue.
        let ready = self.model.ready_set();
        let unscoped_before = |i: usize, same_priority: bool| {
            ready.iter().copied().find(|&j| {
                let other = &self.model.entities[j];
                other.scopes.is_empty()
                    && other.seq < self.model.entities[i].seq
                    && (!same_priority || other.priority == self.model.entities[i].priority)
            })
        };
        match self.kind {
            Kind::Fifo | Kind::Serializable => {
                if let Some(j) = unscoped_before(i, false) {
                    return Err(fail(format!(
                        "next handed out {e:?} before {:?}, put earlier",
                        self.model.entities[j]
                    )));
                }
            }
            Kind::Priority => {
                if let Some(&j) = ready
                    .iter()
                    .find(|&&j| self.model.entities[j].priority > e.priority)
                {
                    return Err(fail(format!(
                        "next handed out {e:?} before {:?}, of higher priority",
                        self.model.entities[j]
                    )));
                }
                if let Some(j) = unscoped_before(i, true) {
                    return Err(fail(format!(
                        "next handed out {e:?} before {:?}, of the same priority and put earlier",
                        self.model.entities[j]
                    )));
                }
            }
            Kind::Shuffled => {}
        }
        {
            let meta = job.base().metadata();
            ensure!(
                meta.status.in_progress && !meta.status.completed,
                "next handed out a job that is not marked in progress: {:?}",
                meta.status
            );
            ensure!(
                meta.status.owner.as_deref() == Some(self.queue.id()),
                "next handed out a job not locked by the queue: {:?}",
                meta.status.owner
            );
        }
        if !self.kind.copies() {
            ensure!(
                Arc::ptr_eq(&job, &e.put),
                "next handed out another object than the job put"
            );
        }
        let e = &mut self.model.entities[i];
        e.state = State::Running;
        e.running = Some(job);
        // Scopes are exclusive among running jobs.
        let running: Vec<&Entity> = self
            .model
            .entities
            .iter()
            .filter(|e| e.state == State::Running)
            .collect();
        for (a, first) in running.iter().enumerate() {
            for second in &running[a + 1..] {
                ensure!(
                    !first.scopes.iter().any(|s| second.scopes.contains(s)),
                    "{first:?} and {second:?} run at once"
                );
            }
        }
        Ok(())
    }

    async fn save(&mut self, pick: Pick) -> Checked {
        // An expired job whose ID was reused is another job to the queue: leave it out.
        let candidates: Vec<usize> = (0..self.model.entities.len())
            .filter(|&j| {
                let e = &self.model.entities[j];
                e.live() || self.model.live_with_key(&e.id, e.attempt).is_none()
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let i = candidates[pick.index(candidates.len())];
        let job = self.handle(i).await?;
        let result = self.queue.save(&job).await;
        let e = &self.model.entities[i];
        match e.state {
            State::Expired => {
                let error = result
                    .err()
                    .ok_or_else(|| fail(format!("saving expired {e:?} succeeded")))?;
                ensure!(
                    error.is_job_not_found(),
                    "saving expired {e:?} failed with the wrong error: {error}"
                );
            }
            State::Pending if self.kind.copies() => {
                // The serializable queue takes the scopes a job holds in its state: a pending
                // job's enqueue scopes, which it holds already.
                result.map_err(|error| fail(format!("saving pending {e:?}: {error}")))?;
            }
            State::Pending => {
                if let Some(scope) = e
                    .scopes
                    .iter()
                    .find(|scope| self.model.held_by_other(Some(i), scope))
                {
                    let error = result.err().ok_or_else(|| {
                        fail(format!(
                            "saving pending {e:?} succeeded although '{scope}' is held"
                        ))
                    })?;
                    ensure!(
                        error.is_duplicate_scope(),
                        "saving pending {e:?} failed with the wrong error: {error}"
                    );
                } else {
                    result.map_err(|error| fail(format!("saving pending {e:?}: {error}")))?;
                    // The local queues' save takes all of a pending job's scopes, as amboy's.
                    self.model.entities[i].saved = true;
                }
            }
            State::Completed if e.unowned => {
                let error = result
                    .err()
                    .ok_or_else(|| fail(format!("saving {e:?} passed the lock rule")))?;
                ensure!(
                    error.is_job_not_found(),
                    "saving {e:?} failed with the wrong error: {error}"
                );
            }
            State::Running | State::Completed | State::Retrying => {
                // A finished job holds no scopes, and saving it must not take any.
                result.map_err(|error| fail(format!("saving {e:?}: {error}")))?;
            }
        }
        Ok(())
    }

    async fn retry(&mut self, pick: Pick, next: bool, handler_save: bool) -> Checked {
        let Some(i) = self.model.pick(pick, |e| e.state == State::Retrying) else {
            return Ok(());
        };
        let retryable = self
            .queue
            .as_retryable()
            .ok_or_else(|| fail("the serializable queue is not retryable"))?;
        let (id, attempt) = {
            let e = &self.model.entities[i];
            (e.id.clone(), e.attempt)
        };
        let get_attempt = || async {
            retryable
                .get_attempt(&id, attempt)
                .await
                .map_err(|error| fail(format!("get attempt {attempt} of {id}: {error}")))
        };
        let to_complete = get_attempt().await?;
        ensure!(
            to_complete.base().retry_info().should_retry(),
            "the stored retrying attempt does not ask to retry"
        );
        if handler_save {
            // The retry handler locks the old attempt and saves it before anything else.
            let owner: Arc<str> = Arc::from(self.queue.id());
            to_complete
                .base()
                .lock(&owner, self.queue.info().lock_timeout)
                .map_err(|error| fail(format!("lock a retrying job: {error}")))?;
            self.queue.save(&to_complete).await.map_err(|error| {
                fail(format!(
                    "save a retrying job ({:?}): {error}",
                    self.model.entities[i]
                ))
            })?;
        }
        if next {
            let successor = get_attempt().await?;
            prepare_next_attempt(&successor, attempt + 1);
            retryable
                .complete_retrying_and_put(&to_complete, successor.clone())
                .await
                .map_err(|error| {
                    fail(format!(
                        "complete_retrying_and_put of {:?}: {error}",
                        self.model.entities[i]
                    ))
                })?;
            self.model.seq += 1;
            let e = &mut self.model.entities[i];
            e.state = State::Completed;
            let successor = Entity {
                id,
                attempt: attempt + 1,
                retryable: true,
                scopes: e.scopes.clone(),
                enqueue: e.enqueue.clone(),
                priority: e.priority,
                timing: e.timing,
                seq: self.model.seq,
                state: State::Pending,
                saved: false,
                unowned: false,
                put: successor,
                running: None,
            };
            self.model.entities.push(successor);
        } else {
            retryable
                .complete_retrying(&to_complete)
                .await
                .map_err(|error| fail(format!("complete_retrying: {error}")))?;
            self.model.entities[i].state = State::Completed;
        }
        Ok(())
    }

    /// Marks the stale pending jobs the queue dropped as expired; only `next` drops jobs.
    async fn observe_expired(&mut self, during_next: bool) -> Checked {
        for i in 0..self.model.entities.len() {
            let e = &self.model.entities[i];
            if e.state != State::Pending || e.timing != Timing::DispatchPast {
                continue;
            }
            match self.queue.get(&e.id).await {
                Ok(_) => {}
                Err(error) if error.is_job_not_found() => {
                    ensure!(during_next, "{e:?} disappeared outside next");
                    self.model.entities[i].state = State::Expired;
                }
                Err(error) => return Err(fail(format!("get {e:?}: {error}"))),
            }
        }
        Ok(())
    }

    /// Checks the queue against the model.
    async fn check(&mut self) -> Checked {
        self.observe_expired(false).await?;
        let model = &self.model;
        let stats: QueueStats = self.queue.stats().await.map_err(fail)?;
        let pending = model.count(State::Pending);
        let running = model.count(State::Running);
        let retrying = model.count(State::Retrying);
        let completed = model.count(State::Completed) + retrying;
        let expired = model.count(State::Expired);
        ensure_eq!(stats.total, model.entities.len(), "total ({stats})");
        ensure_eq!(stats.completed, completed, "completed ({stats})");
        ensure_eq!(stats.expired, expired, "expired ({stats})");
        ensure_eq!(stats.running, running, "running ({stats})");
        ensure_eq!(stats.pending, pending, "pending ({stats})");
        ensure_eq!(stats.retrying, retrying, "retrying ({stats})");
        ensure_eq!(stats.blocked, 0, "blocked ({stats})");
        ensure_eq!(
            stats.total,
            stats.completed + stats.pending + stats.running + stats.expired + stats.blocked,
            "total against its parts ({stats})"
        );
        ensure_eq!(
            stats.is_complete(),
            retrying == 0 && pending == 0 && running == 0,
            "is_complete ({stats})"
        );

        // The dispatcher keeps the lock of every running job alive, and of no other.
        ensure_eq!(
            (self.heartbeat.count)(),
            running,
            "jobs the dispatcher keeps locked"
        );
        for e in model.entities.iter().filter(|e| e.state == State::Running) {
            ensure!(
                (self.heartbeat.covers)(&e.id),
                "{e:?} runs, but the dispatcher no longer keeps its lock alive"
            );
        }

        // `get` finds the latest live attempt of every ID, in the state the model says.
        for (id, _) in &model.ids {
            let got = self.queue.get(id).await;
            let Some(i) = model.latest(id) else {
                match got {
                    Err(error) if error.is_job_not_found() => continue,
                    Err(error) => return Err(fail(format!("get {id}: {error}"))),
                    Ok(job) => {
                        return Err(fail(format!(
                            "get found {id} (status {:?}), which the model says expired",
                            job.base().status()
                        )));
                    }
                }
            };
            let e = &model.entities[i];
            let job = got.map_err(|error| fail(format!("get {e:?}: {error}")))?;
            ensure_eq!(
                attempt_of(&job),
                e.attempt,
                "the attempt get returns for {id}"
            );
            let meta = job.base().metadata();
            let status = &meta.status;
            let as_expected = match e.state {
                State::Pending => !status.completed && !status.in_progress,
                State::Running => !status.completed && status.in_progress,
                State::Completed => {
                    status.completed && !status.in_progress && !meta.retry_info.should_retry()
                }
                State::Retrying => {
                    status.completed && !status.in_progress && meta.retry_info.should_retry()
                }
                State::Expired => unreachable!("latest is live"),
            };
            ensure!(
                as_expected,
                "get {e:?}: status {status:?}, retry {:?}",
                meta.retry_info
            );
            if !self.kind.copies() {
                ensure!(
                    Arc::ptr_eq(&job, &e.put),
                    "get {e:?} returned another object than the job put"
                );
            }
        }

        // `results` lists the completed jobs, `job_info` every live attempt.
        let mut results = self.queue.results().await;
        let mut listed = Vec::new();
        while let Some(job) = results.next().await {
            let job = job.map_err(fail)?;
            listed.push((job.id().to_owned(), attempt_of(&job)));
        }
        listed.sort();
        let expected: Vec<(String, u32)> = model
            .entities
            .iter()
            .filter(|e| e.state == State::Completed)
            .map(|e| (e.id.clone(), e.attempt))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ensure_eq!(listed, expected, "results");
        let infos = self.queue.job_info().await.count().await;
        ensure_eq!(
            infos,
            model.entities.iter().filter(|e| e.live()).count(),
            "job_info count"
        );
        Ok(())
    }
}

/// Runs `ops` against a fresh queue of `kind`, checking after every step.
async fn run_machine(kind: Kind, ops: &[Op]) -> Checked {
    let mut machine = Machine::new(kind).await?;
    let mut outcome = Ok(());
    for (step, op) in ops.iter().enumerate() {
        let result = match machine.apply(op).await {
            Ok(()) => machine.check().await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            outcome = Err(fail(format!(
                "{kind:?} queue, step {step} ({op:?}): {error}\nmodel: {:?}",
                machine.model
            )));
            break;
        }
    }
    machine.queue.close().await;
    outcome
}

fn run(kind: Kind, ops: &[Op]) -> Checked {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run_machine(kind, ops))
}

fn config() -> Config {
    Config {
        cases: CASES,
        // Failures print their minimal sequence; no regression files in the work tree.
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn limited_size_queue_follows_the_model(ops in ops(false)) {
        run(Kind::Fifo, &ops)?;
    }

    #[test]
    fn priority_queue_follows_the_model(ops in ops(false)) {
        run(Kind::Priority, &ops)?;
    }

    #[test]
    fn shuffled_queue_follows_the_model(ops in ops(false)) {
        run(Kind::Shuffled, &ops)?;
    }

    #[test]
    fn serializable_queue_follows_the_model(ops in ops(true)) {
        run(Kind::Serializable, &ops)?;
    }
}

/// The minimal sequences of the bugs this model found, run once each on every queue they
/// concern.
mod regressions {
    use super::*;

    const LOCAL: [Kind; 3] = [Kind::Fifo, Kind::Priority, Kind::Shuffled];
    const RED: usize = 0;
    const GREEN: usize = 1;

    fn put(scopes: &[usize], enqueue: Enqueue, retryable: bool) -> Op {
        Op::Put(PutOp {
            duplicate: None,
            scopes: scopes.to_vec(),
            enqueue,
            timing: Timing::Now,
            priority: 0,
            retryable,
        })
    }

    fn replay(kinds: &[Kind], ops: &[Op]) {
        for &kind in kinds {
            if let Err(error) = run(kind, ops) {
                panic!("{error}");
            }
        }
    }

    /// Saving a completed job took its scopes again, for ever: the next job needing the scope
    /// was refused (enqueue scope) or never ran.
    #[test]
    fn saving_a_completed_job_takes_no_scope() {
        let ops = [
            put(&[RED], Enqueue::None, false),
            Op::Next,
            Op::Complete(Pick(0)),
            Op::Save(Pick(0)),
            put(&[RED], Enqueue::All, false),
        ];
        replay(&LOCAL, &ops);
        replay(&[Kind::Serializable], &ops);
    }

    /// A pending job completed from outside still counted as pending until the line dropped
    /// it: the stats said nothing ran (local queues), or counted it twice (serializable).
    #[test]
    fn completing_a_pending_job_leaves_the_pending_jobs_at_once() {
        let ops = [
            put(&[], Enqueue::None, false),
            put(&[], Enqueue::None, false),
            Op::Next,
            Op::CompletePending(Pick(0)),
        ];
        replay(&LOCAL, &ops);
        replay(&[Kind::Serializable], &ops);
        replay(
            &[Kind::Serializable],
            &[put(&[], Enqueue::None, false), Op::CompletePending(Pick(0))],
        );
    }

    /// A retrying job's dispatch scopes were taken by another job meanwhile: the retry
    /// handler's save took them back (or failed), and `complete_retrying_and_put` refused to
    /// release them.
    #[test]
    fn a_retry_survives_its_dispatch_scope_taken_meanwhile() {
        for handler_save in [false, true] {
            replay(
                &[Kind::Serializable],
                &[
                    put(&[RED, GREEN], Enqueue::First, true),
                    Op::Next,
                    Op::AskRetry(Pick(0)),
                    put(&[GREEN], Enqueue::None, false),
                    Op::Next,
                    Op::Retry {
                        pick: Pick(0),
                        next: true,
                        handler_save,
                    },
                ],
            );
        }
    }

    /// Completing an older attempt again made the dispatcher forget the attempt running under
    /// the same ID, whose lock was no longer kept alive.
    #[test]
    fn completing_an_old_attempt_again_keeps_the_running_attempt_locked() {
        replay(
            &[Kind::Serializable],
            &[
                put(&[], Enqueue::None, true),
                Op::Next,
                Op::AskRetry(Pick(0)),
                Op::Retry {
                    pick: Pick(0),
                    next: true,
                    handler_save: false,
                },
                Op::Next,
                Op::CompleteAgain(Pick(0)),
            ],
        );
    }
}
