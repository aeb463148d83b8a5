use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::{NestedEdges, TypeField, nested_or_flat_edges};
use crate::{DependencyError, JobEdges, Manager, State};

/// A named dependency check: given a job's edges, decide its state.
pub type CheckFunc = Arc<dyn Fn(&[String]) -> State + Send + Sync>;

static CHECKS: LazyLock<RwLock<HashMap<String, CheckFunc>>> = LazyLock::new(Default::default);

/// Registers the check named `name` for [`CheckManager`]s to call; a later registration under
/// the same name replaces the earlier one.
pub fn register_check<F>(name: impl Into<String>, check: F)
where
    F: Fn(&[String]) -> State + Send + Sync + 'static,
{
    CHECKS.write().insert(name.into(), Arc::new(check));
}

/// The check registered as `name`.
pub fn check_function(name: &str) -> Option<CheckFunc> {
    CHECKS.read().get(name).cloned()
}

/// The names of every registered check, sorted.
pub fn registered_checks() -> Vec<String> {
    let mut names: Vec<String> = CHECKS.read().keys().cloned().collect();
    names.sort_unstable();
    names
}

/// A manager whose state comes from a registered check function (registered as `check`,
/// version 1). An unknown check makes the job [`State::Unresolved`].
///
/// Serialized as amboy's: `function_name`, `type` (`{"name": "check", "version": 1}`) and the
/// edges nested as `"edges": {"edges": […]}`; a plain list of edges is read too.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CheckManager {
    /// The name of the registered check.
    pub function_name: String,
    /// The jobs this job depends on, handed to the check.
    #[serde(default, deserialize_with = "nested_or_flat_edges")]
    pub edges: JobEdges,
}

impl Serialize for CheckManager {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_struct("CheckManager", 3)?;
        body.serialize_field("function_name", &self.function_name)?;
        body.serialize_field("type", &TypeField::of(self))?;
        body.serialize_field("edges", &NestedEdges(&self.edges))?;
        body.end()
    }
}

impl CheckManager {
    /// A manager calling the check registered as `function_name`.
    pub fn new(function_name: impl Into<String>) -> Self {
        CheckManager {
            function_name: function_name.into(),
            edges: JobEdges::new(),
        }
    }

    /// The state with its reason: `Err` when the check is not registered.
    pub fn check(&self) -> Result<State, DependencyError> {
        let check = check_function(&self.function_name)
            .ok_or_else(|| DependencyError::UnknownCheck(self.function_name.clone()))?;
        Ok(check(&self.edges.edges()))
    }
}

#[typetag::serde(name = "check")]
impl Manager for CheckManager {
    fn state(&self) -> State {
        self.check().unwrap_or(State::Unresolved)
    }

    fn state_reason(&self) -> Option<String> {
        self.check().err().map(|error| error.to_string())
    }

    fn edges(&self) -> Vec<String> {
        self.edges.edges()
    }

    fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
        self.edges.add_edge(id)
    }

    fn version(&self) -> i32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_check_is_unresolved() {
        let manager = CheckManager::new("amboy-test-no-such-check");
        assert_eq!(manager.state(), State::Unresolved);
        assert!(
            manager
                .state_reason()
                .unwrap()
                .contains("amboy-test-no-such-check")
        );
        assert_eq!(
            manager.check().unwrap_err().to_string(),
            "no dependency check named 'amboy-test-no-such-check' is registered"
        );
    }

    #[test]
    fn registered_check_sees_edges() {
        register_check("amboy-test-blocked-with-edges", |edges: &[String]| {
            if edges.is_empty() {
                State::Ready
            } else {
                State::Blocked
            }
        });
        let manager = CheckManager::new("amboy-test-blocked-with-edges");
        assert_eq!(manager.state(), State::Ready);
        manager.add_edge("a").unwrap();
        assert_eq!(manager.state(), State::Blocked);
        assert!(registered_checks().contains(&"amboy-test-blocked-with-edges".to_owned()));
    }

    #[test]
    fn reregistering_replaces() {
        register_check("amboy-test-replace", |_: &[String]| State::Ready);
        register_check("amboy-test-replace", |_: &[String]| State::Passed);
        assert_eq!(
            CheckManager::new("amboy-test-replace").state(),
            State::Passed
        );
    }

    #[test]
    fn type_info_is_version_one() {
        let info = CheckManager::new("x").manager_type();
        assert_eq!((info.name.as_str(), info.version), ("check", 1));
    }
}
