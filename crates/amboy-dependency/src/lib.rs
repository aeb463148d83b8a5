//! Dependency managers for amboy jobs: the [`State`] a job's dependencies are in, the [`Manager`]
//! trait that computes it, the reusable [`JobEdges`] store, and the managers amboy ships:
//! [`Always`] (`always`), [`CreatesFile`] (`create-file`), [`LocalFile`] (`local-file`) and
//! [`CheckManager`] (`check`, backed by a registry of named checks).
//!
//! This crate sits underneath `amboy-core` (a job carries a dependency manager, exactly as Go's
//! `amboy.Job` carries a `dependency.Manager`), so it knows nothing of jobs or queues.
//! Managers serialize through [`typetag`]: implementing [`Manager`] with
//! `#[typetag::serde(name = "...")]` is the whole registration.
//!
//! Invariants: a manager's edges are the IDs of the jobs it depends on; adding the same edge twice
//! is an error; every manager here is `Send + Sync` and safe to share between tasks.
//!
//! Most users want the `amboy` crate, which re-exports this one as `amboy::dependency`.

mod always;
mod check;
mod creates;
mod edges;
mod error;
mod local;
mod manager;
mod mock;
mod state;
mod wire;

pub use always::Always;
pub use check::{CheckFunc, CheckManager, check_function, register_check, registered_checks};
pub use creates::CreatesFile;
pub use edges::JobEdges;
pub use error::DependencyError;
pub use local::LocalFile;
pub use manager::{Manager, TypeInfo};
pub use mock::MockDependency;
pub use state::State;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<super::Always>();
        assert_send_sync::<super::CreatesFile>();
        assert_send_sync::<super::LocalFile>();
        assert_send_sync::<super::CheckManager>();
        assert_send_sync::<super::JobEdges>();
        assert_send_sync::<Box<dyn super::Manager>>();
    }
}
