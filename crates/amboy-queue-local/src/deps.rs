//! Dependency tracking for the dependency-aware local queues: which jobs wait for which, and
//! what becomes of a job when its edges complete.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use amboy_core::dependency::{Manager, State};
use amboy_core::{Error, JobId, JobRef, Result};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// What to do with a job whose edges are all complete (or that has none).
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Run it.
    Run(JobRef),
    /// Its work is done: complete it without running.
    Pass(JobRef),
    /// It can never run: complete it with this error.
    Fail(JobRef, String),
}

type Hasher = foldhash::fast::RandomState;

/// A stable 64-bit hash of a job ID.
fn fingerprint(id: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x616d_626f_7921).hash_one(id)
}

/// How a job the queue no longer holds ended, as far as edges to it are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It completed: edges to it are met.
    Finished,
    /// It expired before it ran: edges to it can never be met.
    Expired,
}

/// What the queue knows of a job an edge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edge {
    /// Stored and finished.
    Finished,
    /// Stored and not finished.
    Unfinished,
    /// Stored, and set aside because it expired before it ran.
    Expired,
    /// Not stored.
    Missing,
}

/// How many shards the memory of forgotten jobs is split into, so that completions on several
/// threads rarely meet on one lock.
const SHARDS: usize = 16;

/// The dependency graph of one queue.
///
/// The graph is under one lock, taken when a job with edges is put and when a job finishes
/// while others wait. A count of waiting jobs lets a finishing job skip the lock when nobody
/// waits: a job announces itself in the count before it looks at its edges, so a finishing edge
/// either is seen finished or sees the count (see [`Dependencies::admit`]). Every entry of the
/// graph belongs to a waiting job and leaves with it, so an empty count means an empty graph.
///
/// A manager whose `state` does blocking I/O (the file managers) is never asked on the
/// caller's thread: its job waits among the unjudged, and the queue's timer asks it from a
/// blocking thread ([`Dependencies::take_unjudged`], [`Dependencies::decide`]).
#[derive(Debug)]
pub(crate) struct Dependencies {
    graph: Mutex<Graph>,
    /// Fingerprints (64-bit hashes) of the IDs of the jobs the queue forgot most recently, with
    /// how each ended, so that later edges to them are judged: see [`Remembered`].
    remembered: Remembered,
    /// Jobs waiting for edges, for their manager, or to be judged, plus jobs being admitted.
    waiting: AtomicUsize,
    /// Woken when jobs wait to be judged off the runtime.
    unjudged_added: Notify,
}

#[derive(Debug, Default)]
struct Graph {
    /// Jobs waiting for edges.
    waiting: HashMap<JobId, Waiting, Hasher>,
    /// For each job, the jobs waiting on it, each with the serial of its admission: a waiting
    /// job leaving the graph removes its entries, and the serial tells a later job reusing its
    /// ID apart.
    dependents: HashMap<JobId, Vec<(JobId, u64)>, Hasher>,
    /// The serial of the next admission.
    serial: u64,
    /// Jobs whose edges are met but whose manager says `Blocked`: asked again later.
    blocked_by_state: HashMap<JobId, JobRef, Hasher>,
    /// Jobs whose edges are met and whose manager does blocking I/O: asked off the runtime.
    unjudged: Vec<JobRef>,
}

#[derive(Debug)]
struct Waiting {
    job: JobRef,
    /// The edges not finished yet.
    unmet: Vec<JobId>,
    serial: u64,
}

/// The sizes of a dependency graph's structures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GraphSize {
    /// Jobs waiting for edges, their manager, or a judgement.
    pub(crate) waiting: usize,
    /// Entries of the dependents index.
    pub(crate) dependents: usize,
    /// Fingerprints of forgotten jobs remembered.
    pub(crate) remembered: usize,
}

impl Dependencies {
    /// A graph remembering the last `window` jobs the queue forgot (at least one per shard).
    pub(crate) fn new(window: usize) -> Self {
        Dependencies {
            graph: Mutex::new(Graph::default()),
            remembered: Remembered::new(window),
            waiting: AtomicUsize::new(0),
            unjudged_added: Notify::new(),
        }
    }

    /// Takes in a job being put. `lookup` says what the queue knows of a job ID it stores.
    /// Returns `Ok(None)` if the job waits (for edges, or for its manager), or the verdict now.
    /// An edge to a job the queue does not know, or to the job itself, is an error naming both.
    pub(crate) fn admit(
        &self,
        job: &JobRef,
        lookup: impl Fn(&str) -> Edge,
    ) -> Result<Option<Verdict>> {
        let id = job.base().job_id().clone();
        let manager = job.base().metadata().dependency.clone();
        let Some(manager) = manager else {
            return Ok(Some(Verdict::Run(job.clone())));
        };
        let edges = manager.edges();
        if edges.is_empty() {
            return Ok(self.judge(job.clone(), &*manager));
        }
        // Announced before the edges are looked at: an edge finishing after its lookup below
        // then sees a waiting job and takes the lock, which waits for the registration.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut graph = self.graph.lock();
        let mut unmet = Vec::new();
        let mut failure = None;
        for edge in &edges {
            if **edge == *id {
                failure = Some(Err(Error::invalid_job(
                    &*id,
                    format!("it depends on itself, a cycle ('{id}' -> '{id}')"),
                )));
                break;
            }
            // The map first, then the forgotten jobs: the queue remembers a job before it
            // forgets it, so a finished job is always found in one or the other.
            let known = match lookup(edge) {
                Edge::Missing => match self.remembered.get(edge) {
                    Some(Ended::Finished) => Edge::Finished,
                    Some(Ended::Expired) => Edge::Expired,
                    None => Edge::Missing,
                },
                known => known,
            };
            match known {
                Edge::Finished => {}
                Edge::Unfinished => unmet.push(JobId::new(edge)),
                Edge::Expired => {
                    failure = Some(Ok(Some(Verdict::Fail(
                        job.clone(),
                        format!("dependency unresolved: edge '{edge}' expired before it ran"),
                    ))));
                    break;
                }
                Edge::Missing => {
                    failure = Some(Err(Error::invalid_job(
                        &*id,
                        format!("it depends on unknown job '{edge}'"),
                    )));
                    break;
                }
            }
        }
        if let Some(failure) = failure {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return failure;
        }
        if unmet.is_empty() {
            drop(graph);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Ok(self.judge(job.clone(), &*manager));
        }
        let serial = graph.serial;
        graph.serial += 1;
        for edge in &unmet {
            graph
                .dependents
                .entry(edge.clone())
                .or_default()
                .push((id.clone(), serial));
        }
        graph.waiting.insert(
            id,
            Waiting {
                job: job.clone(),
                unmet,
                serial,
            },
        );
        Ok(None)
    }

    /// Records that `id` finished (after it was marked completed); returns the verdicts of the
    /// jobs that no longer wait. Only the jobs waiting on `id` are looked at.
    pub(crate) fn finished(&self, id: &JobId) -> Vec<Verdict> {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        let mut released = Vec::new();
        {
            let mut graph = self.graph.lock();
            for (dependent, serial) in graph.dependents.remove(id).unwrap_or_default() {
                let Some(waiting) = graph.waiting.get_mut(&dependent) else {
                    continue;
                };
                if waiting.serial != serial {
                    continue;
                }
                waiting.unmet.retain(|edge| edge != id);
                if waiting.unmet.is_empty() {
                    let job = graph.waiting.remove(&dependent).expect("present").job;
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    released.push(job);
                }
            }
        }
        released
            .into_iter()
            .filter_map(|job| {
                let manager = job.dependency();
                self.judge(job, &*manager)
            })
            .collect()
    }

    /// Records that a job about to be forgotten by the queue ended as `ended`.
    pub(crate) fn forgotten(&self, id: &str, ended: Ended) {
        self.remembered.insert(id, ended);
    }

    /// Records that `id` was set aside before it ran; its dependents can never run.
    pub(crate) fn expired(&self, id: &JobId) -> Vec<Verdict> {
        let mut graph = self.graph.lock();
        self.fail_dependents(&mut graph, id, "expired before it ran")
    }

    /// Records that the put of `id` failed after other jobs could see it: the jobs that began
    /// waiting on it meanwhile can never run.
    pub(crate) fn withdrawn(&self, id: &JobId) -> Vec<Verdict> {
        let mut graph = self.graph.lock();
        self.fail_dependents(&mut graph, id, "was withdrawn: its put failed")
    }

    fn fail_dependents(&self, graph: &mut Graph, id: &JobId, what: &str) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for (dependent, serial) in graph.dependents.remove(id).unwrap_or_default() {
            if graph
                .waiting
                .get(&dependent)
                .is_some_and(|w| w.serial == serial)
                && let Some(waiting) = graph.waiting.remove(&dependent)
            {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                graph.unlink(&dependent, &waiting);
                verdicts.push(Verdict::Fail(
                    waiting.job,
                    format!("dependency unresolved: edge '{id}' {what}"),
                ));
            }
        }
        verdicts
    }

    /// Takes the jobs to ask again: those waiting for a judgement off the runtime, and, if
    /// `blocked` is set, those whose manager said `Blocked`. Ask them with
    /// [`decide`](Self::decide), from a thread that may block.
    pub(crate) fn take_unjudged(&self, blocked: bool) -> Vec<JobRef> {
        let mut graph = self.graph.lock();
        let mut jobs = std::mem::take(&mut graph.unjudged);
        if blocked {
            jobs.extend(graph.blocked_by_state.drain().map(|(_, job)| job));
        }
        self.waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
        jobs
    }

    /// Whether jobs wait for a judgement off the runtime.
    pub(crate) fn has_unjudged(&self) -> bool {
        !self.graph.lock().unjudged.is_empty()
    }

    /// Completes when jobs were added to those waiting for a judgement off the runtime.
    pub(crate) async fn unjudged_added(&self) {
        self.unjudged_added.notified().await;
    }

    /// Forgets a waiting job (completed from outside); returns whether it was waiting.
    pub(crate) fn forget(&self, id: &str) -> bool {
        let mut graph = self.graph.lock();
        let forgotten = if let Some(waiting) = graph.waiting.remove(id) {
            graph.unlink(&JobId::new(id), &waiting);
            true
        } else if graph.blocked_by_state.remove(id).is_some() {
            true
        } else {
            let before = graph.unjudged.len();
            graph.unjudged.retain(|job| job.id() != id);
            graph.unjudged.len() < before
        };
        if forgotten {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        forgotten
    }

    /// The number of jobs blocked: waiting for edges, or held back by their manager. A job
    /// waiting for its manager's judgement (off the runtime) is not: it may well be ready, and
    /// counted blocked it would let `wait` end before it ran.
    pub(crate) fn blocked(&self) -> usize {
        let graph = self.graph.lock();
        graph.waiting.len() + graph.blocked_by_state.len()
    }

    /// The sizes of the graph's structures.
    pub(crate) fn size(&self) -> GraphSize {
        let graph = self.graph.lock();
        GraphSize {
            waiting: graph.waiting.len() + graph.blocked_by_state.len() + graph.unjudged.len(),
            dependents: graph.dependents.values().map(Vec::len).sum(),
            remembered: self.remembered.len(),
        }
    }

    /// The verdict on a job whose edges are met, or `None` if it waits: for its manager, which
    /// says `Blocked` (it is asked again later), or for a judgement off the runtime, if its
    /// manager does blocking I/O.
    fn judge(&self, job: JobRef, manager: &dyn Manager) -> Option<Verdict> {
        if !manager.does_blocking_io() {
            return self.decide(job, manager);
        }
        {
            let mut graph = self.graph.lock();
            // Completed from outside meanwhile: nothing left to wait for (see `decide`).
            if job.base().metadata().status.completed {
                return None;
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            graph.unjudged.push(job);
        }
        self.unjudged_added.notify_one();
        None
    }

    /// Asks the manager now: the verdict on a job whose edges are met, or `None` if its manager
    /// still blocks it (it then waits among the jobs blocked by their state). The manager is
    /// asked outside the lock.
    pub(crate) fn decide(&self, job: JobRef, manager: &dyn Manager) -> Option<Verdict> {
        match manager.state() {
            State::Ready => Some(Verdict::Run(job)),
            State::Passed => Some(Verdict::Pass(job)),
            State::Unresolved => {
                let reason = manager
                    .state_reason()
                    .map(|reason| format!("dependency unresolved: {reason}"))
                    .unwrap_or_else(|| {
                        format!(
                            "dependency unresolved: the '{}' manager cannot be satisfied",
                            manager.manager_type().name
                        )
                    });
                Some(Verdict::Fail(job, reason))
            }
            State::Blocked => {
                let mut graph = self.graph.lock();
                // Completed from outside while it was judged: nothing left to wait for. The
                // completion marks the job before it asks the graph to forget it, so under the
                // graph's lock either the mark shows here or the forget comes after.
                if job.base().metadata().status.completed {
                    return None;
                }
                self.waiting.fetch_add(1, Ordering::SeqCst);
                graph
                    .blocked_by_state
                    .insert(job.base().job_id().clone(), job);
                None
            }
        }
    }
}

impl Graph {
    /// Removes the entries a waiting job left in the dependents index of its unmet edges.
    fn unlink(&mut self, id: &JobId, waiting: &Waiting) {
        for edge in &waiting.unmet {
            if let Some(list) = self.dependents.get_mut(edge) {
                list.retain(|(dependent, serial)| !(dependent == id && *serial == waiting.serial));
                if list.is_empty() {
                    self.dependents.remove(edge);
                }
            }
        }
    }
}

/// The fingerprints of the jobs a queue forgot most recently, with how each ended: edges to a
/// job stay judged for `window` more forgotten jobs after the queue stops retaining it, then
/// the job is unknown. About 30 bytes a fingerprint, against the hundreds a retained job takes.
///
/// An edge to an unknown job whose ID shares a fingerprint with a remembered one would be
/// judged as that one: with 64 bits, a chance of about one in 10^13 with a million remembered.
#[derive(Debug)]
struct Remembered {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

#[derive(Debug, Default)]
struct Shard {
    /// Oldest first.
    order: VecDeque<u64>,
    /// For each fingerprint: how many times it is in `order`, and how it ended last.
    ends: HashMap<u64, (u32, Ended), Hasher>,
}

impl Remembered {
    fn new(window: usize) -> Self {
        Remembered {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: window.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, fingerprint: u64) -> &Mutex<Shard> {
        &self.shards[(fingerprint >> 60) as usize % SHARDS]
    }

    fn insert(&self, id: &str, ended: Ended) {
        let fingerprint = fingerprint(id);
        let mut shard = self.shard(fingerprint).lock();
        shard.order.push_back(fingerprint);
        let entry = shard.ends.entry(fingerprint).or_insert((0, ended));
        entry.0 += 1;
        entry.1 = ended;
        while shard.order.len() > self.per_shard {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            if let Some(entry) = shard.ends.get_mut(&oldest) {
                entry.0 -= 1;
                if entry.0 == 0 {
                    shard.ends.remove(&oldest);
                }
            }
        }
    }

    fn get(&self, id: &str) -> Option<Ended> {
        let fingerprint = fingerprint(id);
        self.shard(fingerprint)
            .lock()
            .ends
            .get(&fingerprint)
            .map(|&(_, ended)| ended)
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().order.len())
            .sum()
    }
}

/// Orders a batch so that every job comes after the jobs of the batch it depends on. Jobs on a
/// cycle, and jobs depending on them, are left out with one error each naming the cycle.
pub(crate) fn order_batch(jobs: Vec<JobRef>) -> (Vec<JobRef>, Vec<Error>) {
    let ids: HashMap<JobId, usize> = jobs
        .iter()
        .enumerate()
        .map(|(index, job)| (job.base().job_id().clone(), index))
        .collect();
    // edges[i]: the jobs of the batch that job i depends on.
    let edges: Vec<Vec<usize>> = jobs
        .iter()
        .map(|job| {
            let manager = job.base().metadata().dependency.clone();
            manager
                .map(|m| {
                    m.edges()
                        .iter()
                        .filter_map(|edge| ids.get(edge.as_str()).copied())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (job, targets) in edges.iter().enumerate() {
        for &target in targets {
            dependents[target].push(job);
        }
    }

    // Kahn's algorithm, keeping the batch's order among independent jobs.
    let mut unmet: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut ready: VecDeque<usize> = (0..jobs.len()).filter(|&i| unmet[i] == 0).collect();
    let mut order = Vec::with_capacity(jobs.len());
    while let Some(next) = ready.pop_front() {
        order.push(next);
        for &dependent in &dependents[next] {
            unmet[dependent] -= 1;
            if unmet[dependent] == 0 {
                ready.push_back(dependent);
            }
        }
    }

    let mut errors = Vec::new();
    if order.len() < jobs.len() {
        // What is left is on a cycle or downstream of one. Peel off, from the bottom, the jobs no
        // remaining job depends on: those are downstream; the rest lie on cycles.
        let left: HashSet<usize> = (0..jobs.len()).filter(|&i| unmet[i] > 0).collect();
        let mut on_cycle = left.clone();
        loop {
            let leaves: Vec<usize> = on_cycle
                .iter()
                .copied()
                .filter(|&i| !dependents[i].iter().any(|d| on_cycle.contains(d)))
                .collect();
            if leaves.is_empty() {
                break;
            }
            for leaf in leaves {
                on_cycle.remove(&leaf);
            }
        }
        let mut members: Vec<&str> = on_cycle.iter().map(|&i| jobs[i].id()).collect();
        members.sort_unstable();
        let cycle = members
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut left: Vec<usize> = left.into_iter().collect();
        left.sort_unstable();
        for i in left {
            let reason = if on_cycle.contains(&i) {
                format!("it is part of a dependency cycle among {cycle}")
            } else {
                format!("it depends on a dependency cycle among {cycle}")
            };
            errors.push(Error::invalid_job(jobs[i].id(), reason));
        }
    }
    let mut slots: Vec<Option<JobRef>> = jobs.into_iter().map(Some).collect();
    let ordered = order.into_iter().filter_map(|i| slots[i].take()).collect();
    (ordered, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_window_of_forgotten_jobs() {
        let remembered = Remembered::new(64);
        for n in 0..10_000 {
            remembered.insert(&format!("job-{n}"), Ended::Finished);
        }
        assert!(remembered.len() <= 64 + SHARDS, "{}", remembered.len());
        assert_eq!(remembered.get("job-9999"), Some(Ended::Finished));
        assert_eq!(remembered.get("job-0"), None, "forgotten past the window");
        remembered.insert("job-9999", Ended::Expired);
        assert_eq!(
            remembered.get("job-9999"),
            Some(Ended::Expired),
            "the last end counts"
        );
    }
}
