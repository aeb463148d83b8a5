//! What every worker pool shares: the queue(s) it serves, starting and closing, the worker loop
//! (take a job, run it through [`execute_job_behind`], report it, driving the completions a
//! database queue writes while the worker goes on), optional pacing, and, for abortable
//! pools, the register of running jobs.
//!
//! Each public runner is a thin wrapper around one [`Pool`] configured for it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Error, Executed, JobContext, JobId, JobRef, Queue, Result, RunOutcome, execute_job_behind,
};
use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::moving_average::Throttle;

/// How a pool spaces its jobs.
#[derive(Debug)]
pub(crate) enum Pace {
    /// Each worker takes the next job as soon as it is free.
    Free,
    /// Each worker waits this long after every job (the simple rate-limited pool).
    After(Duration),
    /// The whole pool starts jobs on a shared schedule (the moving-average pool).
    Throttled(Throttle),
}

/// One pool of workers over one queue, or over several served in turn.
#[derive(Debug)]
pub(crate) struct Pool {
    size: usize,
    /// Whether `set_queue` adds a queue (several queues) or replaces the one queue.
    many: bool,
    exec: Arc<Exec>,
    state: Mutex<State>,
}

/// What the workers need besides their source of jobs.
#[derive(Debug)]
struct Exec {
    pace: Pace,
    /// The running jobs, for abortable pools.
    register: Option<Register>,
}

#[derive(Default)]
struct State {
    queues: Vec<Weak<dyn Queue>>,
    running: Option<Running>,
    /// A stop under way: its workers are still finishing.
    stopping: Option<Stopping>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queues", &self.queues.len())
            .field("running", &self.running)
            .field("stopping", &self.stopping.is_some())
            .finish()
    }
}

/// A stop under way: a later `close` cancels what still runs, and any later stop or start
/// waits for its workers.
struct Stopping {
    /// Every job's token descends from this one.
    token: CancellationToken,
    /// Ends once every worker ended.
    done: futures::future::Shared<BoxFuture<'static, ()>>,
}

#[derive(Debug)]
struct Running {
    /// Set to stop taking jobs.
    stop: Stop,
    /// Cancelled to stop the running jobs: every job's token descends from it.
    token: CancellationToken,
    workers: JoinSet<()>,
}

/// A worker's two signals: one to stop taking jobs, one that its jobs' tokens descend from.
/// Each worker has its own tokens (children of the pool's), so that waiting on them never
/// contends with the other workers.
#[derive(Debug)]
struct Tokens {
    stop: Stop,
    jobs: CancellationToken,
}

/// The signal to stop taking jobs: a flag read before every take (a load, where a token's own
/// check takes a lock), and a token to wait on.
#[derive(Debug, Clone)]
struct Stop {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Stop {
    fn new() -> Self {
        Stop {
            flag: Arc::new(AtomicBool::new(false)),
            token: CancellationToken::new(),
        }
    }

    /// The same signal, with a token of its own (a child) for one worker to wait on.
    fn for_worker(&self) -> Self {
        Stop {
            flag: self.flag.clone(),
            token: self.token.child_token(),
        }
    }

    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    async fn wait(&self) {
        self.token.cancelled().await;
    }
}

impl Pool {
    /// A pool of `size` workers (at least 1) serving one queue.
    pub(crate) fn new(size: usize, pace: Pace) -> Self {
        Pool {
            size: size.max(1),
            many: false,
            exec: Arc::new(Exec {
                pace,
                register: None,
            }),
            state: Mutex::new(State::default()),
        }
    }

    /// The same pool, keeping a register of running jobs so that they can be aborted.
    pub(crate) fn abortable(mut self) -> Self {
        let exec = Arc::get_mut(&mut self.exec).expect("not shared before start");
        exec.register = Some(Register::default());
        self
    }

    /// The same pool, serving every queue it is given.
    pub(crate) fn serving_many(mut self) -> Self {
        self.many = true;
        self
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn throttle(&self) -> Option<&Throttle> {
        match &self.exec.pace {
            Pace::Throttled(throttle) => Some(throttle),
            _ => None,
        }
    }

    pub(crate) fn started(&self) -> bool {
        self.state.lock().running.is_some()
    }

    /// Sets the queue (or, for a pool serving several, adds it); not possible once started.
    pub(crate) fn set_queue(&self, queue: Arc<dyn Queue>) -> Result<()> {
        let mut state = self.state.lock();
        if state.running.is_some() {
            return Err(Error::AlreadyStarted("runner"));
        }
        if self.many {
            // Forget dropped queues, and serve each queue once however often it is added.
            state.queues.retain(|known| match known.upgrade() {
                Some(known) => known.id() != queue.id(),
                None => false,
            });
            state.queues.push(Arc::downgrade(&queue));
        } else {
            state.queues = vec![Arc::downgrade(&queue)];
        }
        Ok(())
    }

    /// The number of queues set (including dropped ones not yet forgotten).
    pub(crate) fn queue_count(&self) -> usize {
        self.state.lock().queues.len()
    }

    pub(crate) async fn start(&self) -> Result<()> {
        // The workers of a stop under way end first (a start from one of its own jobs would
        // wait for ever: the stop waits for that job): two sets never run at once.
        fn pending(state: &State) -> Option<futures::future::Shared<BoxFuture<'static, ()>>> {
            state
                .stopping
                .as_ref()
                .filter(|stopping| stopping.done.peek().is_none())
                .map(|stopping| stopping.done.clone())
        }
        loop {
            let stopping = pending(&self.state.lock());
            match stopping {
                Some(done) => done.await,
                None => break,
            }
        }
        let mut state = self.state.lock();
        if pending(&state).is_some() {
            // Stopped again meanwhile (by another caller's start and stop).
            return Err(Error::invalid("the runner is stopping"));
        }
        if state.running.is_some() {
            return Ok(());
        }
        state.stopping = None;
        if state.queues.is_empty() {
            return Err(Error::invalid("runner has no queue"));
        }
        let source = if self.many {
            state.queues.retain(|queue| queue.strong_count() > 0);
            let queues: Vec<Arc<dyn Queue>> =
                state.queues.iter().filter_map(Weak::upgrade).collect();
            if queues.is_empty() {
                return Err(Error::invalid("the runner's queues were dropped"));
            }
            Source::Many(Rotation::new(queues))
        } else {
            let queue = state.queues[0]
                .upgrade()
                .ok_or_else(|| Error::invalid("the runner's queue was dropped"))?;
            Source::One(queue)
        };
        let source = Arc::new(source);
        let stop = Stop::new();
        let token = CancellationToken::new();
        let mut workers = JoinSet::new();
        for _ in 0..self.size {
            let tokens = Tokens {
                stop: stop.for_worker(),
                jobs: token.child_token(),
            };
            workers.spawn(worker(source.clone(), self.exec.clone(), tokens));
        }
        state.running = Some(Running {
            stop,
            token,
            workers,
        });
        Ok(())
    }

    /// Stops taking jobs, cancels the running ones and waits for the workers.
    pub(crate) async fn close(&self) {
        self.stop(None).await;
    }

    /// Stops taking jobs, lets the running ones finish for up to `grace`, then cancels those
    /// left and waits for the workers.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop(Some(grace)).await;
    }

    /// Stops the workers; a stop already under way (a `shutdown` whose grace runs, or whose
    /// call was dropped) is joined, and a `close` cancels what it still runs.
    async fn stop(&self, grace: Option<Duration>) {
        let (token, done) = {
            let mut state = self.state.lock();
            match state.running.take() {
                Some(mut running) => {
                    running.stop.set();
                    let token = running.token.clone();
                    // Joined in a task of its own: should this call be dropped part-way, the
                    // workers still finish (completing their jobs) instead of being aborted
                    // mid-job.
                    let joined = tokio::spawn(async move {
                        if let Some(grace) = grace {
                            let finished =
                                async { while running.workers.join_next().await.is_some() {} };
                            let _ = tokio::time::timeout(grace, finished).await;
                        }
                        // Every job's token descends from this one: what still runs is
                        // cancelled.
                        running.token.cancel();
                        while running.workers.join_next().await.is_some() {}
                    });
                    let done = joined.map(drop).boxed().shared();
                    state.stopping = Some(Stopping {
                        token: token.clone(),
                        done: done.clone(),
                    });
                    (token, done)
                }
                None => match &state.stopping {
                    Some(stopping) => (stopping.token.clone(), stopping.done.clone()),
                    None => return,
                },
            }
        };
        if grace.is_none() {
            token.cancel();
        }
        done.await;
    }

    pub(crate) fn register(&self) -> &Register {
        self.exec
            .register
            .as_ref()
            .expect("only abortable pools are asked about running jobs")
    }
}

// -------------------------------------------------------------------------------------------------
// Workers
// -------------------------------------------------------------------------------------------------

/// Takes jobs until the pool closes or its queues do. Jobs' panics are caught where they run;
/// should the worker itself panic (a queue's bug), it starts over, so the pool keeps its size,
/// after a pause that grows while it keeps panicking (a stop cuts it short): a queue that
/// panics at every call does not spin a core.
async fn worker(source: Arc<Source>, exec: Arc<Exec>, tokens: Tokens) {
    let mut backoff = Backoff::new();
    loop {
        let work = std::panic::AssertUnwindSafe(exec.work(&source, &tokens));
        match work.catch_unwind().await {
            Ok(()) => return,
            Err(panic) => tracing::error!(
                panic = amboy_core::panic_message(&*panic),
                "worker panicked outside a job; restarting it"
            ),
        }
        tokio::task::yield_now().await;
        if !sleep_until(Instant::now() + backoff.fail(), &tokens.stop).await {
            return;
        }
    }
}

/// How many of a worker's completions may be in writing while it runs other jobs (queues whose
/// completion waits for a database); a worker with this many waits for the oldest to end.
const COMPLETIONS_BEHIND: usize = 32;

/// A completion being written while its worker goes on, holding the job's place in an
/// abortable pool's register until it is stored.
struct Finishing<'a> {
    completion: BoxFuture<'static, RunOutcome>,
    entered: Option<Entered<'a>>,
}

impl Future for Finishing<'_> {
    type Output = RunOutcome;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<RunOutcome> {
        let outcome = std::task::ready!(self.completion.poll_unpin(cx));
        self.entered = None;
        std::task::Poll::Ready(outcome)
    }
}

/// A worker's completions in writing.
type Behind<'a> = FuturesUnordered<Finishing<'a>>;

/// Awaits `work` while driving the worker's completions in writing, so that they are
/// acknowledged (and retries handed over) while it waits for or runs its next job. `work` is
/// never dropped before it ends.
async fn alongside<F: Future>(behind: &mut Behind<'_>, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    loop {
        if behind.is_empty() {
            return work.await;
        }
        tokio::select! {
            biased;
            out = &mut work => return out,
            Some(_) = behind.next() => {}
        }
    }
}

impl Exec {
    async fn work(&self, source: &Source, tokens: &Tokens) {
        // This worker's completions in writing.
        let mut behind = Behind::new();
        let behind = &mut behind;
        let Tokens { stop, jobs } = tokens;
        // One context for every job this worker runs: jobs that need a token of their own get
        // a child of it.
        let ctx = JobContext::with_token(jobs.clone());
        // This worker's backoff for each queue whose `next` fails.
        let mut backoffs = source.backoffs();
        loop {
            // A throttled pool books its start before taking a job, so that jobs wait in the
            // queue, pending, rather than dispatched in a sleeping worker.
            let slot = match &self.pace {
                Pace::Throttled(throttle) => {
                    let slot = throttle.reserve();
                    if !alongside(behind, sleep_until(slot, stop)).await {
                        break;
                    }
                    Some(slot)
                }
                _ => None,
            };
            // Without completions in writing (always, with an in-memory queue), the future is
            // awaited where it is: moving it into `alongside` would copy it at every job.
            let taken = if behind.is_empty() {
                source.next(stop, &mut backoffs).await
            } else {
                alongside(behind, source.next(stop, &mut backoffs)).await
            };
            let Some((queue, job)) = taken else {
                break;
            };
            if let (Pace::Throttled(throttle), Some(slot)) = (&self.pace, slot)
                && throttle.is_stale(slot)
            {
                // The job came long after the slot: the pool was idle, and every worker holds
                // an old slot. Book a new one, or they would all start at once. Should the pool
                // stop meanwhile, the job (already dispatched) runs at once.
                alongside(behind, sleep_until(throttle.reserve(), stop)).await;
            }
            // Only the throttle reads the clock around a run.
            let started = slot.map(|_| Instant::now());
            let finishing = if behind.is_empty() {
                self.run(queue, &job, &ctx).await
            } else {
                alongside(behind, self.run(queue, &job, &ctx)).await
            };
            if let Some(mut finishing) = finishing {
                // Polled once at once, so that the queue has the completion in hand (a worker
                // that restarts after a panic drops only the wait for its acknowledgement).
                if futures::poll!(&mut finishing).is_pending() {
                    behind.push(finishing);
                }
                while behind.len() >= COMPLETIONS_BEHIND {
                    behind.next().await;
                }
            }
            // A worker finding jobs ready never waits; spend tokio's cooperative budget so that
            // it still lets the other tasks on its thread (producers among them) run.
            tokio::task::coop::consume_budget().await;
            match &self.pace {
                Pace::Free => {}
                Pace::After(interval) => {
                    if !alongside(behind, sleep_until(Instant::now() + *interval, stop)).await {
                        break;
                    }
                }
                Pace::Throttled(throttle) => {
                    if let Some(started) = started {
                        throttle.record(started.elapsed());
                    }
                }
            }
        }
        // The pool stopped or its queues closed: the jobs this worker ran are completed
        // before it ends.
        while behind.next().await.is_some() {}
    }

    /// Runs the job; its completion, when its queue writes it behind, comes back to be driven.
    async fn run<'a>(
        &'a self,
        queue: &Arc<dyn Queue>,
        job: &JobRef,
        ctx: &JobContext,
    ) -> Option<Finishing<'a>> {
        match &self.register {
            None => match execute_job_behind(queue, job, ctx).await {
                Executed::Done(_) => None,
                Executed::Completing(completion) => Some(Finishing {
                    completion,
                    entered: None,
                }),
            },
            Some(register) => {
                let running = register.enter(job, ctx.token());
                let own = JobContext::with_token(running.token.clone());
                match execute_job_behind(queue, job, &own).await {
                    Executed::Done(_) => None,
                    Executed::Completing(completion) => Some(Finishing {
                        completion,
                        entered: Some(running),
                    }),
                }
            }
        }
    }
}

/// Sleeps until `deadline`; false if the pool stopped first.
async fn sleep_until(deadline: Instant, stop: &Stop) -> bool {
    if deadline <= Instant::now() {
        return !stop.is_set();
    }
    tokio::select! {
        biased;
        _ = stop.wait() => false,
        _ = tokio::time::sleep_until(deadline) => true,
    }
}

// -------------------------------------------------------------------------------------------------
// Sources of jobs
// -------------------------------------------------------------------------------------------------

/// Where a started pool's workers take jobs from.
#[derive(Debug)]
enum Source {
    One(Arc<dyn Queue>),
    Many(Rotation),
}

/// What `next` says, read by a worker.
enum Offer {
    Job(JobRef),
    /// The queue is closed: no job will ever come from it.
    Closed,
    /// A transient failure: ask again after a pause.
    Failed(Error),
}

impl From<Result<JobRef>> for Offer {
    fn from(result: Result<JobRef>) -> Self {
        match result {
            Ok(job) => Offer::Job(job),
            Err(error) if error.is_closed() => Offer::Closed,
            Err(error) => Offer::Failed(error),
        }
    }
}

/// One worker's backoff for each queue of its source, and when each queue whose `next` failed
/// may be asked again. Each worker keeps its own, so workers never wait on each other's
/// failures.
#[derive(Debug)]
struct Backoffs {
    queues: Vec<Resting>,
}

#[derive(Debug)]
struct Resting {
    backoff: Backoff,
    /// Set after a failure: the queue is not asked before then.
    until: Option<Instant>,
}

impl Backoffs {
    /// Records a failure of `queue`'s `next`, logs it, and returns when to ask again.
    fn fail(&mut self, i: usize, queue: &dyn Queue, error: &Error) -> Instant {
        let resting = &mut self.queues[i];
        let delay = resting.backoff.fail();
        tracing::warn!(
            queue = queue.id(),
            error = %error,
            retry_in = ?delay,
            "the queue could not hand out a job; asking again after a pause"
        );
        let until = Instant::now() + delay;
        resting.until = Some(until);
        until
    }

    fn succeed(&mut self, i: usize) {
        let resting = &mut self.queues[i];
        resting.backoff.reset();
        resting.until = None;
    }
}

impl Source {
    fn queues(&self) -> &[Arc<dyn Queue>] {
        match self {
            Source::One(queue) => std::slice::from_ref(queue),
            Source::Many(rotation) => &rotation.queues,
        }
    }

    /// A fresh backoff per queue, for one worker.
    fn backoffs(&self) -> Backoffs {
        Backoffs {
            queues: self
                .queues()
                .iter()
                .map(|_| Resting {
                    backoff: Backoff::new(),
                    until: None,
                })
                .collect(),
        }
    }

    /// The next job and its queue; `None` once the pool stops (`stop` is cancelled) or every
    /// queue closed. A queue whose `next` fails otherwise is asked again after a pause (which
    /// the stop signal ends).
    async fn next(
        &self,
        stop: &Stop,
        backoffs: &mut Backoffs,
    ) -> Option<(&Arc<dyn Queue>, JobRef)> {
        match self {
            Source::One(queue) => loop {
                if stop.is_set() {
                    return None;
                }
                // The queue comes first: when it has a job ready, the stop signal is only read,
                // not waited on.
                if let Some(job) = queue.try_next() {
                    backoffs.succeed(0);
                    return Some((queue, job));
                }
                let offer = tokio::select! {
                    biased;
                    result = queue.next() => Offer::from(result),
                    _ = stop.wait() => return None,
                };
                match offer {
                    Offer::Job(job) => {
                        backoffs.succeed(0);
                        return Some((queue, job));
                    }
                    Offer::Closed => return None,
                    Offer::Failed(error) => {
                        let until = backoffs.fail(0, &**queue, &error);
                        if !sleep_until(until, stop).await {
                            return None;
                        }
                    }
                }
            },
            Source::Many(rotation) => rotation.next(stop, backoffs).await,
        }
    }
}

/// Several queues served in turn.
///
/// A worker waits on every open queue's `next` at once and takes the first job offered; the
/// others' `next` futures are dropped, which the `Queue` contract allows without losing a job.
/// The queues are polled in an order that starts one queue further on at every take, so that
/// when several queues have jobs ready they are served round-robin, and a queue without jobs
/// never holds up the others. A queue whose `next` fails rests for its backoff, left out of
/// the wait while the others are served.
#[derive(Debug)]
struct Rotation {
    queues: Vec<Arc<dyn Queue>>,
    /// Queues whose `next` reported them closed: skipped from then on.
    closed: Vec<AtomicBool>,
    turn: AtomicUsize,
}

impl Rotation {
    fn new(queues: Vec<Arc<dyn Queue>>) -> Self {
        let closed = queues.iter().map(|_| AtomicBool::new(false)).collect();
        Rotation {
            queues,
            closed,
            turn: AtomicUsize::new(0),
        }
    }

    async fn next(
        &self,
        stop: &Stop,
        backoffs: &mut Backoffs,
    ) -> Option<(&Arc<dyn Queue>, JobRef)> {
        let n = self.queues.len();
        loop {
            if stop.is_set() {
                return None;
            }
            let first = self.turn.fetch_add(1, Ordering::Relaxed);
            // The open queues in this turn's order, and the earliest end of a rest among them.
            // The clock is read only while some queue rests.
            let mut order = Vec::with_capacity(n);
            let mut open = false;
            let mut now = None;
            let mut wake: Option<Instant> = None;
            for i in (first..first + n).map(|i| i % n) {
                if self.closed[i].load(Ordering::Relaxed) {
                    continue;
                }
                open = true;
                let resting = &mut backoffs.queues[i];
                if let Some(until) = resting.until {
                    if until > *now.get_or_insert_with(Instant::now) {
                        wake = Some(wake.map_or(until, |wake| wake.min(until)));
                        continue;
                    }
                    resting.until = None;
                }
                order.push(i);
            }
            if !open {
                return None;
            }
            if order.is_empty() {
                // Every open queue rests: wait for the first to be ready again.
                if let Some(wake) = wake
                    && !sleep_until(wake, stop).await
                {
                    return None;
                }
                continue;
            }
            let offers = futures::future::select_all(order.iter().map(|&i| self.queues[i].next()));
            // Built lazily: without a resting queue it is never polled.
            let rest_ends = async move {
                if let Some(wake) = wake {
                    tokio::time::sleep_until(wake).await;
                }
            };
            let (result, position) = tokio::select! {
                biased;
                _ = stop.wait() => return None,
                (result, position, _others) = offers => (result, position),
                // A rest ended: ask again with that queue back in (the `next` futures dropped
                // meanwhile lose no job).
                _ = rest_ends, if wake.is_some() => continue,
            };
            if let Some(job) = self.take(order[position], result.into(), backoffs) {
                return Some(job);
            }
        }
    }

    /// What the worker does with queue `i`'s offer: a job to run, or nothing (the queue is
    /// marked closed, or rests after a failure).
    fn take(
        &self,
        i: usize,
        offer: Offer,
        backoffs: &mut Backoffs,
    ) -> Option<(&Arc<dyn Queue>, JobRef)> {
        match offer {
            Offer::Job(job) => {
                backoffs.succeed(i);
                Some((&self.queues[i], job))
            }
            Offer::Closed => {
                self.closed[i].store(true, Ordering::Relaxed);
                None
            }
            Offer::Failed(error) => {
                backoffs.fail(i, &*self.queues[i], &error);
                None
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Running jobs of abortable pools
// -------------------------------------------------------------------------------------------------

/// The jobs running in an abortable pool, by ID, each with its own token.
#[derive(Debug, Default)]
pub(crate) struct Register {
    jobs: DashMap<JobId, Entry>,
    serial: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    /// Tells this run from a later run of a job with the same ID.
    serial: u64,
    token: CancellationToken,
    /// Cancelled once the run is over and the job completed in its queue.
    finished: CancellationToken,
}

/// A job's registration, removed when the run is over, even if the worker panics.
struct Entered<'a> {
    register: &'a Register,
    id: JobId,
    serial: u64,
    token: CancellationToken,
    finished: CancellationToken,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.register
            .jobs
            .remove_if(&self.id, |_, entry| entry.serial == self.serial);
        self.finished.cancel();
    }
}

impl Register {
    fn enter(&self, job: &JobRef, pool: &CancellationToken) -> Entered<'_> {
        let id = job.base().job_id().clone();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let token = pool.child_token();
        let finished = CancellationToken::new();
        self.jobs.insert(
            id.clone(),
            Entry {
                serial,
                token: token.clone(),
                finished: finished.clone(),
            },
        );
        Entered {
            register: self,
            id,
            serial,
            token,
            finished,
        }
    }

    pub(crate) fn is_running(&self, id: &str) -> bool {
        self.jobs.contains_key(id)
    }

    pub(crate) fn running_jobs(&self) -> Vec<String> {
        self.jobs
            .iter()
            .map(|entry| entry.key().to_string())
            .collect()
    }

    /// Cancels the job and waits until its worker has completed it in the queue (with amboy's
    /// "aborted" error, unless it finished first).
    pub(crate) async fn abort(&self, id: &str) -> Result<()> {
        let (_, entry) = self.jobs.remove(id).ok_or_else(|| {
            Error::job_not_found_because(id, "no such job is running in this pool")
        })?;
        entry.token.cancel();
        entry.finished.cancelled().await;
        Ok(())
    }

    /// Cancels every running job, then waits until each is completed.
    pub(crate) async fn abort_all(&self) -> Result<()> {
        let ids: Vec<JobId> = self.jobs.iter().map(|entry| entry.key().clone()).collect();
        let entries: Vec<Entry> = ids
            .iter()
            .filter_map(|id| self.jobs.remove(id).map(|(_, entry)| entry))
            .collect();
        for entry in &entries {
            entry.token.cancel();
        }
        for entry in &entries {
            entry.finished.cancelled().await;
        }
        Ok(())
    }
}

/// Implements `Runner` (and, with `abortable`, `AbortableRunner`) for a type whose `pool` field
/// is a [`Pool`]: every runner here is a pool with a pace, and differs in nothing else.
macro_rules! runner_over_pool {
    ($runner:ty) => {
        $crate::pool::runner_over_pool!(@runner $runner, {});
    };
    ($runner:ty, abortable) => {
        $crate::pool::runner_over_pool!(@runner $runner, {
            fn as_abortable(&self) -> Option<&dyn amboy_core::AbortableRunner> {
                Some(self)
            }
        });

        #[async_trait::async_trait]
        impl amboy_core::AbortableRunner for $runner {
            fn is_running(&self, id: &str) -> bool {
                self.pool.register().is_running(id)
            }

            fn running_jobs(&self) -> Vec<String> {
                self.pool.register().running_jobs()
            }

            async fn abort(&self, id: &str) -> amboy_core::Result<()> {
                self.pool.register().abort(id).await
            }

            async fn abort_all(&self) -> amboy_core::Result<()> {
                self.pool.register().abort_all().await
            }
        }
    };
    (@runner $runner:ty, { $($extra:item)* }) => {
        #[async_trait::async_trait]
        impl amboy_core::Runner for $runner {
            fn started(&self) -> bool {
                self.pool.started()
            }

            fn set_queue(
                &self,
                queue: std::sync::Arc<dyn amboy_core::Queue>,
            ) -> amboy_core::Result<()> {
                self.pool.set_queue(queue)
            }

            async fn start(&self) -> amboy_core::Result<()> {
                self.pool.start().await
            }

            async fn close(&self) {
                self.pool.close().await
            }

            async fn shutdown(&self, grace: std::time::Duration) {
                self.pool.shutdown(grace).await
            }

            $($extra)*
        }
    };
}

pub(crate) use runner_over_pool;
