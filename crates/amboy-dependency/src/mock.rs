use serde::{Deserialize, Serialize};

use crate::{DependencyError, JobEdges, Manager, State};

/// A manager that reports whatever state it is given, for tests (registered as `mock`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MockDependency {
    /// The state [`Manager::state`] returns.
    pub response: State,
    /// The jobs this job depends on.
    #[serde(default)]
    pub edges: JobEdges,
}

impl MockDependency {
    /// A manager that always reports `response`.
    pub fn new(response: State) -> Self {
        MockDependency {
            response,
            edges: JobEdges::new(),
        }
    }
}

#[typetag::serde(name = "mock")]
impl Manager for MockDependency {
    fn state(&self) -> State {
        self.response
    }

    fn edges(&self) -> Vec<String> {
        self.edges.edges()
    }

    fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
        self.edges.add_edge(id)
    }
}
