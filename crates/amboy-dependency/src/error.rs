use std::path::PathBuf;

/// Errors from dependency managers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DependencyError {
    /// The edge was added before.
    #[error("edge '{0}' already exists")]
    EdgeExists(String),
    /// An integer that is not a [`State`](crate::State) code.
    #[error("{0} is not a valid dependency state")]
    InvalidState(i32),
    /// A `local-file` dependency names a file that does not exist.
    #[error("dependency file '{}' does not exist", .0.display())]
    MissingDependency(PathBuf),
    /// The file system refused to describe a file.
    #[error("cannot read metadata of '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A `check` manager names a check that is not registered.
    #[error("no dependency check named '{0}' is registered")]
    UnknownCheck(String),
}
