/// Why a job could not be encoded or decoded. Every message names the job and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The stored job's type is not registered in this program.
    #[error(
        "job '{id}' has type '{type_name}', which is not registered (registered: {registered})"
    )]
    UnknownJobType {
        /// The job's ID.
        id: String,
        /// The stored type name.
        type_name: String,
        /// The registered type names, comma-separated.
        registered: String,
    },
    /// The stored job's version differs from the registered type's.
    #[error(
        "job '{id}' of type '{type_name}' was stored at version {stored}, but the registered version is {registered}"
    )]
    VersionMismatch {
        /// The job's ID.
        id: String,
        /// The type name.
        type_name: String,
        /// The stored version.
        stored: i32,
        /// The registered version.
        registered: i32,
    },
    /// The stored job's body does not decode into its type.
    #[error(
        "job '{id}' of type '{type_name}' (stored version {version}) cannot be decoded: {reason}"
    )]
    MalformedJob {
        /// The job's ID.
        id: String,
        /// The type name.
        type_name: String,
        /// The stored version.
        version: i32,
        /// What the decoder said.
        reason: String,
    },
    /// The stored envelope is not valid JSON of an amboy job.
    #[error("stored job '{id}' is malformed: {reason}")]
    MalformedEnvelope {
        /// The job's ID, or `<unknown>` when even that cannot be read.
        id: String,
        /// What the decoder said.
        reason: String,
    },
    /// The stored dependency's type is not registered.
    #[error("job '{id}' has a dependency of type '{type_name}', which is not registered")]
    UnknownDependencyType {
        /// The job's ID.
        id: String,
        /// The stored dependency type name.
        type_name: String,
    },
    /// The stored dependency's version differs from the registered one.
    #[error(
        "job '{id}' has a dependency '{type_name}' stored at version {stored}, but the registered version is {registered}"
    )]
    DependencyVersionMismatch {
        /// The job's ID.
        id: String,
        /// The dependency type name.
        type_name: String,
        /// The stored version.
        stored: i32,
        /// The registered version.
        registered: i32,
    },
    /// The stored dependency does not decode.
    #[error("job '{id}' has a dependency '{type_name}' that cannot be decoded: {reason}")]
    MalformedDependency {
        /// The job's ID.
        id: String,
        /// The dependency type name.
        type_name: String,
        /// What the decoder said.
        reason: String,
    },
    /// The job's type has a negative version: it runs only on in-memory queues.
    #[error(
        "job '{id}' of type '{type_name}' cannot be serialized: its version {version} is negative"
    )]
    NotSerializable {
        /// The job's ID.
        id: String,
        /// The type name.
        type_name: String,
        /// The negative version.
        version: i32,
    },
    /// The job's fields, or its dependency manager's, could not be encoded (their `Serialize`
    /// failed or panicked).
    #[error("job '{id}' cannot be encoded: {reason}")]
    Encode {
        /// The job's ID.
        id: String,
        /// What the encoder said.
        reason: String,
    },
}

impl RegistryError {
    /// The ID of the job the error is about.
    pub fn job_id(&self) -> &str {
        match self {
            RegistryError::UnknownJobType { id, .. }
            | RegistryError::VersionMismatch { id, .. }
            | RegistryError::MalformedJob { id, .. }
            | RegistryError::MalformedEnvelope { id, .. }
            | RegistryError::UnknownDependencyType { id, .. }
            | RegistryError::DependencyVersionMismatch { id, .. }
            | RegistryError::MalformedDependency { id, .. }
            | RegistryError::NotSerializable { id, .. }
            | RegistryError::Encode { id, .. } => id,
        }
    }
}

impl From<RegistryError> for amboy_core::Error {
    fn from(error: RegistryError) -> Self {
        amboy_core::Error::codec(error)
    }
}
