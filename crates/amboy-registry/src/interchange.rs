//! amboy's `JobInterchange`: the envelope a job travels and is stored in.

use amboy_core::{Job, JobRef, JobRetryInfo, JobStatusInfo, JobTimeInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{RegistryError, build_dependency, build_job};

/// Errors are truncated in the envelope once their total length exceeds this many characters.
pub const ERROR_TRUNCATION_THRESHOLD: usize = 100_000;
/// At most this many errors are kept when truncating.
pub const MAX_ERRORS_KEPT: usize = 100;
/// Each kept error is cut to this many characters when truncating.
pub const MAX_ERROR_LENGTH: usize = 1000;

/// A job with all of its metadata, in amboy's wire form.
///
/// JSON field names are amboy's: `name` (the ID), `type`, `group`, `version`, `status`,
/// `scopes`, `enqueue_scopes`, `enqueue_all_scopes`, `retry_info`, `time_info`, `job` (the job's
/// own fields) and `dependency`; `priority` is added for priority queues.
///
/// Documents written by amboy (Go) decode: the times it writes for unset values (Go's zero
/// time) decode as unset. Encoding writes what amboy writes for the job's `Base`
/// (`job_type` beside `name` and `required_scopes`) and for the dependency (`edges`, even
/// when empty, and the manager's `type` in its body), and leaves unset times out, which amboy
/// reads as its zero time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInterchange {
    /// The job's ID.
    pub name: String,
    /// The job type's registered name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The queue group the job belongs to, when stored in a shared table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The job type's version.
    pub version: i32,
    /// The job's priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The job's status (errors truncated by amboy's rule).
    #[serde(default)]
    pub status: JobStatusInfo,
    /// The scopes the job holds now (written by stores, ignored when decoding).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The scopes taken at enqueue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enqueue_scopes: Vec<String>,
    /// Whether all scopes are taken at enqueue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enqueue_all_scopes: bool,
    /// The job's retry information.
    #[serde(default)]
    pub retry_info: JobRetryInfo,
    /// The job's timing.
    #[serde(default)]
    pub time_info: JobTimeInfo,
    /// The job's own fields, as its type serializes them.
    pub job: Box<RawValue>,
    /// The job's dependency manager; absent means `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency: Option<DependencyInterchange>,
}

/// A dependency manager in wire form (amboy's `DependencyInterchange`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DependencyInterchange {
    /// The manager type's registered name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The manager type's version.
    pub version: i32,
    /// The edges, for reading; decoding takes them from the manager's own fields. Written even
    /// when empty (`[]`), as amboy does; `null` reads as empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub edges: Vec<String>,
    /// The manager's own fields.
    pub dependency: Box<RawValue>,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Encodes `value`, which runs the registered type's own code (see
/// [`guarded`](crate::lookup::guarded)).
fn encoded(value: &dyn erased_serde::Serialize) -> Result<Box<RawValue>, String> {
    crate::lookup::guarded("encoding", || serde_json::value::to_raw_value(value))
}

impl JobInterchange {
    /// The envelope of `job`. Fails for jobs whose type version is negative, and for a job, or
    /// a dependency manager, whose `Serialize` fails or panics.
    pub fn from_job(job: &dyn Job) -> Result<Self, RegistryError> {
        let id = job.id();
        let job_type = job.job_type();
        if job_type.version < 0 {
            return Err(RegistryError::NotSerializable {
                id: id.to_owned(),
                type_name: job_type.name.into_owned(),
                version: job_type.version,
            });
        }
        let encode_error = |reason: String| RegistryError::Encode {
            id: id.to_owned(),
            reason,
        };
        // The job's `Base` cannot know the job's type; recorded here, the body names it
        // (`job_type`) as amboy's does. A no-op once recorded, or when read from a document.
        job.base().record_job_type(job_type.clone());
        let body = encoded(job as &dyn erased_serde::Serialize).map_err(encode_error)?;
        let meta = job.base().metadata().clone();
        let dependency = match &meta.dependency {
            None => None,
            Some(manager) => {
                let info = manager.manager_type();
                Some(DependencyInterchange {
                    type_name: info.name,
                    version: info.version,
                    edges: manager.edges(),
                    dependency: encoded(&**manager as &dyn erased_serde::Serialize)
                        .map_err(encode_error)?,
                })
            }
        };
        let mut status = meta.status;
        truncate_errors(&mut status.errors);
        Ok(JobInterchange {
            name: id.to_owned(),
            type_name: job_type.name.into_owned(),
            group: String::new(),
            version: job_type.version,
            priority: meta.priority,
            status,
            scopes: Vec::new(),
            enqueue_scopes: meta.enqueue_scopes,
            enqueue_all_scopes: meta.enqueue_all_scopes,
            retry_info: meta.retry_info,
            time_info: meta.time_info,
            job: body,
            dependency,
        })
    }

    /// The job this envelope holds, with its metadata restored.
    pub fn resolve(&self) -> Result<JobRef, RegistryError> {
        let job = build_job(&self.name, &self.type_name, self.version, &self.job)?;
        let dependency = match &self.dependency {
            Some(dep) => Some(build_dependency(
                &self.name,
                &dep.type_name,
                dep.version,
                &dep.dependency,
            )?),
            None => None,
        };
        if job.id() != self.name {
            return Err(RegistryError::MalformedJob {
                id: self.name.clone(),
                type_name: self.type_name.clone(),
                version: self.version,
                reason: format!("the job's fields name it '{}'", job.id()),
            });
        }
        {
            let mut meta = job.base().metadata();
            meta.status = self.status.clone();
            meta.time_info = self.time_info.clone();
            meta.retry_info = self.retry_info.clone();
            meta.enqueue_scopes = self.enqueue_scopes.clone();
            meta.enqueue_all_scopes = self.enqueue_all_scopes;
            meta.priority = self.priority;
            meta.dependency = dependency;
        }
        Ok(job)
    }

    /// The envelope as JSON.
    pub fn to_json(&self) -> Result<String, RegistryError> {
        serde_json::to_string(self).map_err(|error| RegistryError::Encode {
            id: self.name.clone(),
            reason: error.to_string(),
        })
    }

    /// An envelope read from JSON; malformed input is an error naming the job if its `name`
    /// can be read.
    pub fn from_json(json: &str) -> Result<Self, RegistryError> {
        serde_json::from_str(json).map_err(|error| RegistryError::MalformedEnvelope {
            id: salvage_id(json),
            reason: error.to_string(),
        })
    }
}

/// The `name` of a malformed envelope, if it can be read at all: from the parsed object when the
/// JSON is well formed, else from the first `"name"` string in the text (encoders write it first).
fn salvage_id(json: &str) -> String {
    #[derive(Deserialize)]
    struct NameOnly {
        name: String,
    }
    if let Ok(only) = serde_json::from_str::<NameOnly>(json) {
        return only.name;
    }
    let first_name = json.find("\"name\"").and_then(|at| {
        let rest = json[at + "\"name\"".len()..]
            .trim_start()
            .strip_prefix(':')?;
        serde_json::Deserializer::from_str(rest)
            .into_iter::<String>()
            .next()?
            .ok()
    });
    first_name.unwrap_or_else(|| "<unknown>".to_owned())
}

/// Encodes a job as its JSON envelope.
pub fn encode_job(job: &dyn Job) -> Result<String, RegistryError> {
    JobInterchange::from_job(job)?.to_json()
}

/// Decodes a job from its JSON envelope.
pub fn decode_job(json: &str) -> Result<JobRef, RegistryError> {
    JobInterchange::from_json(json)?.resolve()
}

/// amboy's error truncation: when the errors' total length exceeds
/// [`ERROR_TRUNCATION_THRESHOLD`], keep the first [`MAX_ERRORS_KEPT`], each cut to
/// [`MAX_ERROR_LENGTH`] characters.
pub fn truncate_errors(errors: &mut Vec<String>) {
    let total: usize = errors.iter().map(|error| error.chars().count()).sum();
    if total <= ERROR_TRUNCATION_THRESHOLD {
        return;
    }
    errors.truncate(MAX_ERRORS_KEPT);
    for error in errors.iter_mut() {
        if let Some((cut, _)) = error.char_indices().nth(MAX_ERROR_LENGTH) {
            error.truncate(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job whose `Serialize` panics once it has run (`armed`).
    #[derive(Debug, Deserialize)]
    struct Bomb {
        base: amboy_core::Base,
        #[serde(skip)]
        armed: bool,
    }

    impl Serialize for Bomb {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            assert!(!self.armed, "no way out");
            #[derive(Serialize)]
            struct Fields<'a> {
                base: &'a amboy_core::Base,
            }
            Fields { base: &self.base }.serialize(serializer)
        }
    }

    #[typetag::serde(name = "registry-test-encode-bomb")]
    #[async_trait::async_trait]
    impl Job for Bomb {
        fn base(&self) -> &amboy_core::Base {
            &self.base
        }

        async fn run(&self, _ctx: &amboy_core::JobContext) -> Result<(), amboy_core::JobError> {
            Ok(())
        }
    }

    /// A dependency manager whose `Serialize` panics.
    #[derive(Debug, Deserialize)]
    struct BombManager;

    impl Serialize for BombManager {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("no manager out either")
        }
    }

    #[typetag::serde(name = "registry-test-encode-bomb-manager")]
    impl amboy_dependency::Manager for BombManager {
        fn state(&self) -> amboy_dependency::State {
            amboy_dependency::State::Ready
        }

        fn edges(&self) -> Vec<String> {
            Vec::new()
        }

        fn add_edge(&self, _id: &str) -> Result<(), amboy_dependency::DependencyError> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_while_encoding_is_the_jobs_error() {
        let bomb = Bomb {
            base: amboy_core::Base::with_id("j"),
            armed: false,
        };
        JobInterchange::from_job(&bomb).expect("unarmed, it encodes");
        let bomb = Bomb {
            armed: true,
            ..bomb
        };
        let err = JobInterchange::from_job(&bomb).unwrap_err();
        assert!(matches!(err, RegistryError::Encode { .. }), "{err:?}");
        assert!(
            err.to_string().contains("'j'")
                && err.to_string().contains("encoding it panicked: no way out"),
            "{err}"
        );

        let managed = Bomb {
            base: amboy_core::Base::with_id("m").with_dependency(BombManager),
            armed: false,
        };
        let err = JobInterchange::from_job(&managed).unwrap_err();
        assert!(
            err.to_string().contains("'m'")
                && err
                    .to_string()
                    .contains("encoding it panicked: no manager out either"),
            "{err}"
        );
    }

    #[test]
    fn truncation_keeps_short_error_lists() {
        let mut errors = vec!["a".repeat(10); 5];
        truncate_errors(&mut errors);
        assert_eq!(errors, vec!["a".repeat(10); 5]);
    }

    #[test]
    fn truncation_cuts_long_error_lists() {
        let mut errors = vec!["é".repeat(10_000); 5000];
        truncate_errors(&mut errors);
        assert_eq!(errors.len(), MAX_ERRORS_KEPT);
        assert!(
            errors
                .iter()
                .all(|error| error.chars().count() == MAX_ERROR_LENGTH)
        );
    }
}
