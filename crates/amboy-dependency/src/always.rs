use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::TypeField;
use crate::{DependencyError, JobEdges, Manager, State};

/// The default manager: the job is always ready to run (registered as `always`).
///
/// Serialized as amboy's: `{"type": {"name": "always", "version": 0}, "edges": […]}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Always {
    /// The jobs this job depends on.
    #[serde(default)]
    pub edges: JobEdges,
}

impl Always {
    /// A manager that is always [`State::Ready`].
    pub fn new() -> Self {
        Self::default()
    }
}

impl Serialize for Always {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_struct("Always", 2)?;
        body.serialize_field("type", &TypeField::of(self))?;
        body.serialize_field("edges", &self.edges)?;
        body.end()
    }
}

#[typetag::serde(name = "always")]
impl Manager for Always {
    fn state(&self) -> State {
        State::Ready
    }

    fn edges(&self) -> Vec<String> {
        self.edges.edges()
    }

    fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
        self.edges.add_edge(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_ready_even_with_edges() {
        let always = Always::new();
        assert_eq!(always.state(), State::Ready);
        always.add_edge("other").unwrap();
        assert_eq!(always.state(), State::Ready);
        assert_eq!(always.edges(), ["other"]);
    }

    #[test]
    fn type_info_is_always_version_zero() {
        let info = Always::new().manager_type();
        assert_eq!(info.name, "always");
        assert_eq!(info.version, 0);
    }
}
