//! Points where a unit test of this crate runs code of its own in the middle of an operation,
//! to force an interleaving (test builds only).

use amboy_core::JobRef;
use parking_lot::Mutex;

type Hook = Box<dyn FnOnce(&JobRef) + Send + Sync>;

/// The hooks of one queue; each runs once, if set, where its name says.
#[derive(Default)]
pub(crate) struct Hooks {
    /// After `take` decided, under the job's lock, that the job expired, and released it.
    pub(crate) after_expiry_decided: Mutex<Option<Hook>>,
    /// After `save` encoded the job, before it takes the store's lock.
    pub(crate) after_save_encoded: Mutex<Option<Hook>>,
    /// After the serializable queue set aside an expired job and let go of the store's lock.
    pub(crate) after_expiry_unlocked: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

impl Hooks {
    /// Runs the hook `at`, if set, with `job`, and unsets it.
    pub(crate) fn run(&self, at: &Mutex<Option<Hook>>, job: &JobRef) {
        let hook = at.lock().take();
        if let Some(hook) = hook {
            hook(job);
        }
    }
}
