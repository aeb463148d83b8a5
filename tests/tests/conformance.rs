//! The conformance matrix: every scenario, for every queue × runner × size.

use amboy_tests::cases::{
    ABORTABLE, ADAPTIVE_ORDERING, DEPENDENCY_ORDERED, LIMITED_SIZE, LIMITED_SIZE_SERIALIZABLE,
    LOCAL_WORKERS, MOVING_AVERAGE, MULTI_QUEUE, POSTGRES, PRIORITY, RATE_LIMITED, SHUFFLED, SINGLE,
};
use amboy_tests::scenarios::{Scenario, run, run_without_runner};

/// One test per scenario for a (queue, runner, size). The first marker is `[retry]` for
/// retryable queues (which store copies, so they also run the save-locking scenario); the second is `[one]` for runners with a single worker, which cannot show
/// scoped jobs waiting while free ones run.
macro_rules! scenarios {
    (@each $queue:expr, $runner:expr, $size:expr; $($test:ident => $scenario:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                run(Scenario::$scenario, $queue, $runner, $size).await;
            }
        )*
    };
    (@retry $queue:expr, $runner:expr, $size:expr) => {
        scenarios!(@each $queue, $runner, $size;
            retry_once => RetryOnce, retry_scoped_all => RetryScopedAll,
            retry_scoped_subset => RetryScopedSubset, retry_stale => RetryStale,
            save_locking_check => SaveLockingCheck);
    };
    (@base $queue:expr, $runner:expr, $size:expr) => {
        scenarios!(@each $queue, $runner, $size;
            basic => Basic, wait_until => WaitUntil, dispatch_by => DispatchBy, max_time => MaxTime,
            one_execution => OneExecution, enqueue_scopes => EnqueueScopes);
    };
    ([] [] $queue:expr, $runner:expr, $size:expr) => {
        scenarios!(@base $queue, $runner, $size);
        scenarios!(@each $queue, $runner, $size; scoped_lock => ScopedLock);
    };
    ([] [one] $queue:expr, $runner:expr, $size:expr) => {
        scenarios!(@base $queue, $runner, $size);
    };
    ([retry] $one:tt $queue:expr, $runner:expr, $size:expr) => {
        scenarios!([] $one $queue, $runner, $size);
        scenarios!(@retry $queue, $runner, $size);
    };
}

/// The scenarios at every size of amboy's matrix.
macro_rules! sizes {
    (@each $kind:tt $one:tt $queue:expr, $runner:expr; $($module:ident => $size:expr),*) => {
        $(
            mod $module {
                use super::*;
                scenarios!($kind $one $queue, $runner, $size);
            }
        )*
    };
    ($kind:tt $one:tt $queue:expr, $runner:expr) => {
        sizes!(@each $kind $one $queue, $runner; size_1 => 1, size_2 => 2, size_4 => 4, size_8 => 8,
            size_16 => 16, size_32 => 32, size_64 => 64);
    };
}

/// Every runner for each queue; `[retry]` adds the retry scenarios. The scenarios that take
/// the jobs themselves run once per queue, without workers.
macro_rules! runners {
    ($kind:tt $($queue_module:ident => $queue:expr),* $(,)?) => {
        $(
            mod $queue_module {
                use super::*;

                mod without_runner {
                    use super::*;

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn next_cancel_safe() {
                        run_without_runner(Scenario::NextCancelSafe, $queue).await;
                    }
                }

                mod local_workers {
                    use super::*;
                    sizes!($kind [] $queue, LOCAL_WORKERS);
                }

                mod abortable {
                    use super::*;
                    sizes!($kind [] $queue, ABORTABLE);
                }

                mod single {
                    use super::*;
                    sizes!($kind [one] $queue, SINGLE);
                }

                mod rate_limited {
                    use super::*;
                    sizes!($kind [] $queue, RATE_LIMITED);
                }

                mod moving_average {
                    use super::*;
                    sizes!($kind [] $queue, MOVING_AVERAGE);
                }

                mod multi_queue {
                    use super::*;
                    sizes!($kind [] $queue, MULTI_QUEUE);
                }
            }
        )*
    };
}

runners! {
    []
    limited_size => LIMITED_SIZE,
    priority => PRIORITY,
    shuffled => SHUFFLED,
    dependency_ordered => DEPENDENCY_ORDERED,
    adaptive_ordering => ADAPTIVE_ORDERING,
}

runners! {
    [retry]
    limited_size_serializable => LIMITED_SIZE_SERIALIZABLE,
    postgres => POSTGRES,
}
