use std::path::Path;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::TypeField;
use crate::{DependencyError, JobEdges, Manager, State};

/// Ready until a file exists, then passed: for jobs whose work is creating that file
/// (registered as `create-file`).
///
/// Serialized as amboy's: `file_name`, `type` (`{"name": "create-file", "version": 0}`) and
/// `edges`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreatesFile {
    /// The file the job creates. An empty name means the job always runs.
    #[serde(default)]
    pub file_name: String,
    /// The jobs this job depends on.
    #[serde(default)]
    pub edges: JobEdges,
}

impl CreatesFile {
    /// A manager for a job that creates `file_name`.
    pub fn new(file_name: impl Into<String>) -> Self {
        CreatesFile {
            file_name: file_name.into(),
            edges: JobEdges::new(),
        }
    }
}

impl Serialize for CreatesFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_struct("CreatesFile", 3)?;
        body.serialize_field("file_name", &self.file_name)?;
        body.serialize_field("type", &TypeField::of(self))?;
        body.serialize_field("edges", &self.edges)?;
        body.end()
    }
}

#[typetag::serde(name = "create-file")]
impl Manager for CreatesFile {
    /// It reads the file system.
    fn does_blocking_io(&self) -> bool {
        true
    }

    fn state(&self) -> State {
        if self.file_name.is_empty() || !Path::new(&self.file_name).exists() {
            State::Ready
        } else {
            State::Passed
        }
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
    fn existing_paths_pass() {
        let dir = env!("CARGO_MANIFEST_DIR");
        for path in [
            dir.to_owned(),
            format!("{dir}/src"),
            format!("{dir}/Cargo.toml"),
        ] {
            assert_eq!(CreatesFile::new(path).state(), State::Passed);
        }
    }

    #[test]
    fn missing_paths_and_empty_names_are_ready() {
        for path in ["", "foo", "1 2 3", "this/file/does/not/exist.txt"] {
            assert_eq!(CreatesFile::new(path).state(), State::Ready, "{path:?}");
        }
    }

    #[test]
    fn type_info() {
        let info = CreatesFile::new("x").manager_type();
        assert_eq!((info.name.as_str(), info.version), ("create-file", 0));
    }
}
