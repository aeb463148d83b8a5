//! [`Footprint`]: the sizes of a local queue's internal structures.

/// The sizes of a local queue's internal structures, beyond the jobs themselves: what tests and
/// monitoring read to see that a queue's memory stays bounded. Every count is bounded by the
/// queue's capacity (`delayed` by twice the capacity, `tracked` by its workers); fields a queue
/// does not have are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// Jobs (or stored records) held: pending, blocked, running and retained finished ones.
    pub jobs: usize,
    /// Finished (completed or expired) jobs retained for `get`, `results` and `job_info`.
    pub retained: usize,
    /// Jobs waiting in the dependency graph: for edges, for their manager, or for a judgement.
    pub waiting: usize,
    /// Entries of the dependency graph's index of who waits on whom.
    pub dependents: usize,
    /// Fingerprints of forgotten jobs the dependency graph remembers for later edges.
    pub remembered: usize,
    /// Entries of the index of each retryable job's latest attempt.
    pub latest_attempts: usize,
    /// Jobs parked beside a held scope.
    pub parked: usize,
    /// Entries of the timer heap: jobs waiting for their `wait_until`, and jobs completed from
    /// outside meanwhile that it has not swept out yet (never more than the capacity).
    pub delayed: usize,
    /// Dispatched copies whose locks the dispatcher keeps alive.
    pub tracked: usize,
}
