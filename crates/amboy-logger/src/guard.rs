//! What keeps the layer from feeding itself (fix 11): the events it ignores, and the markers
//! that tell them apart.

use std::cell::Cell;
use std::future::Future;

thread_local! {
    /// Set while this thread is inside the layer's `on_event`.
    static HANDLING: Cell<bool> = const { Cell::new(false) };
}

tokio::task_local! {
    /// Set while a task does the logger's own work: forwarding records into the queue, sending
    /// one to the sink, flushing the sink.
    static OWN_WORK: ();
}

/// Whether events with this target come from amboy itself: `amboy`, `amboy_core::…`,
/// `amboy_queue_local::…`, `amboy_runner::…`, this crate, and any other target starting with
/// `amboy`.
pub(crate) fn is_amboy_target(target: &str) -> bool {
    target.starts_with("amboy")
}

/// Whether the current task is doing the logger's own work.
pub(crate) fn is_own_work() -> bool {
    OWN_WORK.try_with(|_| ()).is_ok()
}

/// Runs `work` as the logger's own work: events it emits (in this task) are not logged.
pub(crate) async fn own_work<F: Future>(work: F) -> F::Output {
    OWN_WORK.scope((), work).await
}

/// Marks this thread as inside `on_event` for as long as it lives.
pub(crate) struct Handling(());

impl Handling {
    /// Enters `on_event`; `None` if this thread is in it already (an event emitted while the
    /// layer handles another one, by a field's `Debug` say), or is being torn down.
    pub(crate) fn enter() -> Option<Self> {
        HANDLING
            .try_with(|handling| (!handling.replace(true)).then_some(Handling(())))
            .ok()
            .flatten()
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let _ = HANDLING.try_with(|handling| handling.set(false));
    }
}
