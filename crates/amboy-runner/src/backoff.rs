//! How long a worker waits before asking a failing queue for a job again.
//!
//! [`Queue::next`](amboy_core::Queue::next) fails for good only with `Error::Closed`; any other
//! error is transient (a database queue lost its connection, say). A worker then waits and asks
//! again, with exponential backoff and full jitter: after the `n`th failure in a row it waits a
//! random time between zero and `min(cap, first · 2ⁿ⁻¹)`, so that workers failing together do
//! not ask again together. A job taken resets the count.

use std::time::Duration;

/// The backoff of one worker for one queue: the failures in a row so far, and a random source
/// for the jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    /// Failures since the last job taken.
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// The ceiling of the wait after the first failure.
    pub(crate) const FIRST: Duration = Duration::from_millis(10);
    /// The ceiling never grows past this.
    pub(crate) const CAP: Duration = Duration::from_secs(1);

    /// A backoff from [`FIRST`](Self::FIRST) up to [`CAP`](Self::CAP).
    pub(crate) fn new() -> Self {
        Self::with(Self::FIRST, Self::CAP, fastrand::Rng::new())
    }

    /// A backoff whose ceiling starts at `first` (at least a nanosecond) and doubles up to `cap`
    /// (at least `first`), drawing its jitter from `rng`.
    pub(crate) fn with(first: Duration, cap: Duration, rng: fastrand::Rng) -> Self {
        let first = first.max(Duration::from_nanos(1));
        Backoff {
            first,
            cap: cap.max(first),
            failures: 0,
            rng,
        }
    }

    /// Records a failure and returns how long to wait before asking again: a random time
    /// between zero and the (new) ceiling.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = u64::try_from(self.ceiling().as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=ceiling))
    }

    /// Forgets the failures: the queue handed out a job.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The longest wait after the failures so far: `first · 2ⁿ⁻¹` after `n` failures, at most
    /// the cap (zero before any failure).
    pub(crate) fn ceiling(&self) -> Duration {
        let Some(doublings) = self.failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        // 2³¹ · a nanosecond is past any sensible cap already; the product saturates.
        let factor = 1u32 << doublings.min(31);
        self.first.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(seed: u64) -> Backoff {
        Backoff::with(Backoff::FIRST, Backoff::CAP, fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let mut backoff = seeded(1);
        assert_eq!(backoff.ceiling(), Duration::ZERO);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            backoff.fail();
            ceilings.push(backoff.ceiling().as_millis());
        }
        assert_eq!(
            ceilings,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000]
        );
    }

    #[test]
    fn every_wait_is_within_its_ceiling() {
        for seed in 0..200 {
            let mut backoff = seeded(seed);
            for _ in 0..40 {
                let wait = backoff.fail();
                assert!(
                    wait <= backoff.ceiling(),
                    "{wait:?} > {:?}",
                    backoff.ceiling()
                );
                assert!(wait <= Backoff::CAP);
            }
        }
    }

    /// Full jitter spreads the waits over the whole range below the ceiling, and the waits grow
    /// with the failures: on average half the ceiling.
    #[test]
    fn the_waits_grow_with_the_failures() {
        let rounds = 2000u32;
        let mut means = [Duration::ZERO; 9];
        for seed in 0..u64::from(rounds) {
            let mut backoff = seeded(seed);
            for mean in &mut means {
                *mean += backoff.fail() / rounds;
            }
        }
        for (n, mean) in means.iter().enumerate() {
            let half = Backoff::FIRST.saturating_mul(1 << n).min(Backoff::CAP) / 2;
            let (low, high) = (half.mul_f64(0.9), half.mul_f64(1.1));
            assert!(
                low <= *mean && *mean <= high,
                "failure {}: mean wait {mean:?}, expected about {half:?}",
                n + 1
            );
        }
    }

    #[test]
    fn a_reset_starts_over() {
        let mut backoff = seeded(7);
        for _ in 0..20 {
            backoff.fail();
        }
        assert_eq!(backoff.ceiling(), Backoff::CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::ZERO);
        let wait = backoff.fail();
        assert_eq!(backoff.ceiling(), Backoff::FIRST);
        assert!(wait <= Backoff::FIRST);
    }

    #[test]
    fn extreme_settings_never_panic() {
        let mut tiny = Backoff::with(Duration::ZERO, Duration::ZERO, fastrand::Rng::with_seed(3));
        let mut huge = Backoff::with(
            Duration::from_secs(u64::MAX / 4),
            Duration::MAX,
            fastrand::Rng::with_seed(3),
        );
        for _ in 0..100 {
            assert!(tiny.fail() <= Duration::from_nanos(1));
            huge.fail();
        }
        assert_eq!(tiny.ceiling(), Duration::from_nanos(1));
        assert_eq!(huge.ceiling(), Duration::MAX);
        assert_eq!(Backoff::new().ceiling(), Duration::ZERO);
    }
}
