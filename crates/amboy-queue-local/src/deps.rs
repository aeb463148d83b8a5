//! Dependency tracking for the dependency-aware local queues: which jobs wait for which, and
//! what becomes of a job when its edges complete.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use amboy_core::dependency::{Manager, State};
use amboy_core::{Error, JobId, JobRef, Result};
use dashmap::DashMap;
use parking_lot::Mutex;

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

/// The dependency graph of one queue.
///
/// The graph is under one lock, taken when a job with edges is put and when a job finishes
/// while others wait. A count of waiting jobs lets a finishing job skip the lock when nobody
/// waits: a job announces itself in the count before it looks at its edges, so a finishing edge
/// either is seen finished or sees the count (see [`Dependencies::admit`]).
#[derive(Debug, Default)]
pub(crate) struct Dependencies {
    graph: Mutex<Graph>,
    /// Fingerprints (64-bit hashes) of the IDs of finished jobs the queue no longer retains, so
    /// that later edges to them are met: 8 bytes a job. Jobs still retained answer for
    /// themselves. Recorded before the queue forgets a job. An edge to an unknown job whose ID
    /// shares a fingerprint with an evicted one would pass as met: with 64 bits, a chance of
    /// about one in 10^13 with a million evicted jobs.
    evicted: DashMap<u64, (), Hasher>,
    /// Jobs waiting for edges or for their manager, plus jobs being admitted.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct Graph {
    /// Jobs dropped before they ran: edges to them can never be met.
    expired: HashSet<JobId, Hasher>,
    /// Jobs waiting for edges, with how many are not finished yet.
    waiting: HashMap<JobId, Waiting, Hasher>,
    /// For each job, the jobs waiting on it, each with the serial of its admission: a job
    /// completed from outside leaves its entries behind, and a later job reusing its ID must
    /// not be counted down by them.
    dependents: HashMap<JobId, Vec<(JobId, u64)>, Hasher>,
    /// The serial of the next admission.
    serial: u64,
    /// Jobs whose edges are met but whose manager says `Blocked`: asked again later.
    blocked_by_state: HashMap<JobId, JobRef, Hasher>,
}

#[derive(Debug)]
struct Waiting {
    job: JobRef,
    unmet: usize,
    serial: u64,
}

/// What the queue knows of a job an edge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edge {
    /// Stored and finished.
    Finished,
    /// Stored and not finished.
    Unfinished,
    /// Not stored.
    Missing,
}

impl Dependencies {
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
            if graph.expired.contains(edge.as_str()) {
                failure = Some(Ok(Some(Verdict::Fail(
                    job.clone(),
                    format!("dependency unresolved: edge '{edge}' expired before it ran"),
                ))));
                break;
            }
            // The map first, then the evicted jobs: the queue records a job as evicted before
            // it forgets it, so a finished job is always found in one or the other.
            match lookup(edge) {
                Edge::Finished => {}
                Edge::Unfinished => unmet.push(edge.as_str()),
                Edge::Missing if self.evicted.contains_key(&fingerprint(edge)) => {}
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
                .entry(JobId::new(edge))
                .or_default()
                .push((id.clone(), serial));
        }
        graph.waiting.insert(
            id,
            Waiting {
                job: job.clone(),
                unmet: unmet.len(),
                serial,
            },
        );
        Ok(None)
    }

    /// Records that `id` finished (after it was marked completed); returns the verdicts of the
    /// jobs that no longer wait.
    pub(crate) fn finished(&self, id: &JobId) -> Vec<Verdict> {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        let mut verdicts = Vec::new();
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
                waiting.unmet -= 1;
                if waiting.unmet == 0 {
                    let job = graph.waiting.remove(&dependent).expect("present").job;
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    released.push(job);
                }
            }
        }
        for job in released {
            let manager = job.dependency();
            verdicts.extend(self.judge(job, &*manager));
        }
        verdicts.extend(self.recheck());
        verdicts
    }

    /// Records that a finished job is about to be forgotten by the queue.
    pub(crate) fn evicted(&self, id: &str) {
        self.evicted.insert(fingerprint(id), ());
    }

    /// Records that `id` was dropped before it ran; its dependents can never run.
    pub(crate) fn expired(&self, id: &JobId) -> Vec<Verdict> {
        let mut graph = self.graph.lock();
        graph.expired.insert(id.clone());
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
                verdicts.push(Verdict::Fail(
                    waiting.job,
                    format!("dependency unresolved: edge '{id}' {what}"),
                ));
            }
        }
        verdicts
    }

    /// Asks the managers of jobs blocked by their state again.
    pub(crate) fn recheck(&self) -> Vec<Verdict> {
        let blocked: Vec<JobRef> = {
            let mut graph = self.graph.lock();
            if graph.blocked_by_state.is_empty() {
                return Vec::new();
            }
            let drained: Vec<JobRef> = graph.blocked_by_state.drain().map(|(_, job)| job).collect();
            self.waiting.fetch_sub(drained.len(), Ordering::SeqCst);
            drained
        };
        blocked
            .into_iter()
            .filter_map(|job| {
                let manager = job.dependency();
                self.judge(job, &*manager)
            })
            .collect()
    }

    /// Forgets a waiting job (completed from outside); returns whether it was waiting.
    pub(crate) fn forget(&self, id: &str) -> bool {
        let mut graph = self.graph.lock();
        let forgotten =
            graph.waiting.remove(id).is_some() || graph.blocked_by_state.remove(id).is_some();
        if forgotten {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        forgotten
    }

    /// The number of jobs waiting for edges or for their manager.
    pub(crate) fn blocked(&self) -> usize {
        let graph = self.graph.lock();
        graph.waiting.len() + graph.blocked_by_state.len()
    }

    /// The verdict on a job whose edges are met, or `None` if its manager still blocks it (it
    /// then waits among the jobs blocked by their state). The manager is asked outside the lock.
    fn judge(&self, job: JobRef, manager: &dyn Manager) -> Option<Verdict> {
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
    let mut ready: std::collections::VecDeque<usize> =
        (0..jobs.len()).filter(|&i| unmet[i] == 0).collect();
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
