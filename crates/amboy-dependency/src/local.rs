use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::{TypeField, null_as_empty};
use crate::{DependencyError, JobEdges, Manager, State};

/// A make-like file dependency (registered as `local-file`): the job must run when any target
/// is missing or older than any of its dependencies.
///
/// amboy skips the first dependency and crashes on a missing one; here every dependency is
/// compared, and a missing dependency makes the job [`State::Unresolved`], with
/// [`LocalFile::check`] naming the file.
///
/// Serialized as amboy's: `targets`, `dependencies` (either may be `null` when read),
/// `type` (`{"name": "local-file", "version": 0}`) and `edges`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LocalFile {
    /// The files the job produces.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub targets: Vec<String>,
    /// The files the targets are built from.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub dependencies: Vec<String>,
    /// The jobs this job depends on.
    #[serde(default)]
    pub edges: JobEdges,
}

impl LocalFile {
    /// A manager for one target built from `dependencies`.
    pub fn new<I, S>(target: impl Into<String>, dependencies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LocalFile {
            targets: vec![target.into()],
            dependencies: dependencies.into_iter().map(Into::into).collect(),
            edges: JobEdges::new(),
        }
    }

    /// The state with its reason: `Err` names the dependency that is missing or unreadable.
    pub fn check(&self) -> Result<State, DependencyError> {
        if self.targets.is_empty() {
            return Ok(State::Ready);
        }
        let mut oldest_target: Option<SystemTime> = None;
        for target in &self.targets {
            match modified(target)? {
                None => return Ok(State::Ready),
                Some(time) => {
                    oldest_target = Some(oldest_target.map_or(time, |old| old.min(time)));
                }
            }
        }
        let oldest_target = oldest_target.expect("targets is not empty");
        let mut state = State::Passed;
        for dependency in &self.dependencies {
            match modified(dependency)? {
                None => {
                    return Err(DependencyError::MissingDependency(PathBuf::from(
                        dependency,
                    )));
                }
                Some(time) if time > oldest_target => state = State::Ready,
                Some(_) => {}
            }
        }
        Ok(state)
    }
}

/// The modification time of `path`, or `None` if it does not exist.
fn modified(path: &str) -> Result<Option<SystemTime>, DependencyError> {
    let io = |source| DependencyError::Io {
        path: PathBuf::from(path),
        source,
    };
    match Path::new(path).metadata() {
        Ok(meta) => meta.modified().map(Some).map_err(io),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io(err)),
    }
}

impl Serialize for LocalFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_struct("LocalFile", 4)?;
        body.serialize_field("targets", &self.targets)?;
        body.serialize_field("dependencies", &self.dependencies)?;
        body.serialize_field("type", &TypeField::of(self))?;
        body.serialize_field("edges", &self.edges)?;
        body.end()
    }
}

#[typetag::serde(name = "local-file")]
impl Manager for LocalFile {
    /// It reads the file system.
    fn does_blocking_io(&self) -> bool {
        true
    }

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
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A scratch directory removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "amboy-local-file-{name}-{}-{:?}",
                std::process::id(),
                SystemTime::now()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Creates `count` files whose modification time is `age` in the past.
        fn files(&self, prefix: &str, count: usize, age: Duration) -> Vec<String> {
            (0..count)
                .map(|i| {
                    let path = self.0.join(format!("{prefix}-{i}"));
                    let file = File::create(&path).unwrap();
                    file.set_modified(SystemTime::now() - age).unwrap();
                    path.to_string_lossy().into_owned()
                })
                .collect()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn manager(targets: Vec<String>, dependencies: Vec<String>) -> LocalFile {
        LocalFile {
            targets,
            dependencies,
            edges: JobEdges::new(),
        }
    }

    #[test]
    fn no_targets_is_ready() {
        assert_eq!(manager(vec![], vec!["x".into()]).state(), State::Ready);
    }

    #[test]
    fn missing_target_is_ready() {
        let scratch = Scratch::new("missing-target");
        let deps = scratch.files("dep", 3, Duration::from_secs(60));
        let mut targets = scratch.files("target", 2, Duration::ZERO);
        targets.push(scratch.0.join("absent").to_string_lossy().into_owned());
        assert_eq!(manager(targets, deps).state(), State::Ready);
    }

    #[test]
    fn targets_older_than_dependencies_are_ready() {
        let scratch = Scratch::new("older-targets");
        let targets = scratch.files("target", 20, Duration::from_secs(3600));
        let deps = scratch.files("dep", 20, Duration::ZERO);
        assert_eq!(manager(targets, deps).state(), State::Ready);
    }

    #[test]
    fn targets_newer_than_dependencies_pass() {
        let scratch = Scratch::new("newer-targets");
        let deps = scratch.files("dep", 20, Duration::from_secs(3600));
        let targets = scratch.files("target", 20, Duration::ZERO);
        assert_eq!(manager(targets, deps).state(), State::Passed);
    }

    #[test]
    fn one_newer_dependency_is_ready() {
        let scratch = Scratch::new("one-newer");
        let mut deps = scratch.files("dep", 20, Duration::from_secs(3600));
        let targets = scratch.files("target", 20, Duration::from_secs(60));
        deps.extend(scratch.files("fresh", 1, Duration::ZERO));
        assert_eq!(manager(targets, deps).state(), State::Ready);
    }

    #[test]
    fn first_dependency_is_compared_too() {
        // amboy never compared the first dependency, so a single newer one passed (bug fixed).
        let scratch = Scratch::new("first-dep");
        let targets = scratch.files("target", 1, Duration::from_secs(3600));
        let deps = scratch.files("dep", 1, Duration::ZERO);
        assert_eq!(manager(targets, deps).state(), State::Ready);
    }

    #[test]
    fn missing_dependency_is_unresolved_and_named() {
        let scratch = Scratch::new("missing-dep");
        let targets = scratch.files("target", 1, Duration::ZERO);
        let mut deps = scratch.files("dep", 2, Duration::from_secs(3600));
        let missing = scratch.0.join("gone").to_string_lossy().into_owned();
        deps.insert(1, missing.clone());
        let local = manager(targets, deps);
        assert_eq!(local.state(), State::Unresolved);
        assert_eq!(
            local.state_reason().unwrap(),
            format!("dependency file '{missing}' does not exist")
        );
        let err = local.check().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("dependency file '{missing}' does not exist")
        );
    }

    #[test]
    fn constructor_and_type_info() {
        let local = LocalFile::new("out", ["a", "b"]);
        assert_eq!(local.targets, ["out"]);
        assert_eq!(local.dependencies, ["a", "b"]);
        let info = local.manager_type();
        assert_eq!((info.name.as_str(), info.version), ("local-file", 0));
    }
}
