use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{DependencyError, State};

/// The registered name and version of a dependency manager (amboy's `dependency.TypeInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TypeInfo {
    /// The name the manager type is registered under.
    pub name: String,
    /// The version of the manager type; stored managers must match it exactly to decode.
    pub version: i32,
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Decides whether a job may run, and names the jobs it waits for.
///
/// Implementations register themselves with one attribute, `#[typetag::serde(name = "...")]`,
/// which is what lets a stored job bring its dependency back.
///
/// ```
/// use amboy_dependency::{DependencyError, JobEdges, Manager, State};
/// use serde::{Deserialize, Serialize};
///
/// /// Ready only on weekdays.
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Weekdays {
///     edges: JobEdges,
/// }
///
/// #[typetag::serde(name = "weekdays")]
/// impl Manager for Weekdays {
///     fn state(&self) -> State {
///         State::Ready
///     }
///     fn edges(&self) -> Vec<String> {
///         self.edges.edges()
///     }
///     fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
///         self.edges.add_edge(id)
///     }
/// }
///
/// let manager: Box<dyn Manager> = Box::new(Weekdays::default());
/// assert_eq!(manager.manager_type().name, "weekdays");
/// assert_eq!(manager.state(), State::Ready);
/// ```
#[typetag::serde(tag = "type", content = "dependency")]
pub trait Manager: Send + Sync + fmt::Debug {
    /// The current state of the dependencies.
    fn state(&self) -> State;

    /// The IDs of the jobs this job depends on.
    fn edges(&self) -> Vec<String>;

    /// Adds the ID of a job this job depends on; adding an edge twice is an error.
    fn add_edge(&self, id: &str) -> Result<(), DependencyError>;

    /// Why the state is what it is, when the manager can say (for example, which input of an
    /// [`Unresolved`](State::Unresolved) job is missing).
    fn state_reason(&self) -> Option<String> {
        None
    }

    /// Whether [`state`](Manager::state) does blocking I/O (reads the file system, say). Queues
    /// ask such a manager from a thread that may block, never from an async runtime's worker.
    /// `false` unless overridden.
    fn does_blocking_io(&self) -> bool {
        false
    }

    /// The version of the manager type; bump it when the stored form changes.
    fn version(&self) -> i32 {
        0
    }

    /// The registered name and the version of this manager.
    fn manager_type(&self) -> TypeInfo {
        TypeInfo {
            name: self.typetag_name().to_owned(),
            version: self.version(),
        }
    }
}
