//! Reading typetag's registrations: listing the registered names and building a value of a
//! registered type from its name and body.
//!
//! typetag keeps its registry private. Two public contracts give us what we need: a typetag
//! trait object deserializes from a map holding its tag and content, and an unknown tag is
//! reported through `serde::de::Error::unknown_variant` with the full list of registered names.
//! [`TaggedDeserializer`] presents exactly such a map without copying the body, and a
//! deserializer whose error type captures the `unknown_variant` list yields the names.

use std::fmt;
use std::sync::{Arc, OnceLock};

use amboy_core::{Job, JobRef};
use amboy_dependency::Manager;
use serde::Deserialize;
use serde::de::value::{StrDeserializer, UnitDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::RegistryError;

/// The tag and content keys the `Job` trait is registered with.
const JOB_KEYS: [&str; 2] = ["type", "job"];
/// The tag and content keys the `Manager` trait is registered with.
const DEPENDENCY_KEYS: [&str; 2] = ["type", "dependency"];

/// The names of every registered job type, sorted.
pub fn registered_job_types() -> &'static [&'static str] {
    static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();
    NAMES.get_or_init(|| probe::<Box<dyn Job>>(JOB_KEYS))
}

/// The names of every registered dependency manager type, sorted.
pub fn registered_dependency_types() -> &'static [&'static str] {
    static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();
    NAMES.get_or_init(|| probe::<Box<dyn Manager>>(DEPENDENCY_KEYS))
}

/// Whether a job type named `name` is registered.
pub fn is_registered_job_type(name: &str) -> bool {
    registered_job_types().binary_search(&name).is_ok()
}

/// Whether a dependency type named `name` is registered.
pub fn is_registered_dependency_type(name: &str) -> bool {
    registered_dependency_types().binary_search(&name).is_ok()
}

/// Builds the job `id` of the registered type `type_name` from its JSON `body`, checking that the
/// registered type's version is `version`.
pub fn build_job(
    id: &str,
    type_name: &str,
    version: i32,
    body: &RawValue,
) -> Result<JobRef, RegistryError> {
    if !is_registered_job_type(type_name) {
        return Err(RegistryError::UnknownJobType {
            id: id.to_owned(),
            type_name: type_name.to_owned(),
            registered: registered_job_types().join(", "),
        });
    }
    let mut body_de = serde_json::Deserializer::from_str(body.get());
    let job = guarded("decoding", || {
        Box::<dyn Job>::deserialize(TaggedDeserializer::new(JOB_KEYS, type_name, &mut body_de))
    })
    .map_err(|reason| RegistryError::MalformedJob {
        id: id.to_owned(),
        type_name: type_name.to_owned(),
        version,
        reason,
    })?;
    let registered = job.version();
    if registered != version {
        return Err(RegistryError::VersionMismatch {
            id: id.to_owned(),
            type_name: type_name.to_owned(),
            stored: version,
            registered,
        });
    }
    Ok(Arc::from(job))
}

/// Builds the dependency manager of job `id` of the registered type `type_name` from its JSON
/// `body`, checking the version.
pub fn build_dependency(
    id: &str,
    type_name: &str,
    version: i32,
    body: &RawValue,
) -> Result<Arc<dyn Manager>, RegistryError> {
    if !is_registered_dependency_type(type_name) {
        return Err(RegistryError::UnknownDependencyType {
            id: id.to_owned(),
            type_name: type_name.to_owned(),
        });
    }
    let mut body_de = serde_json::Deserializer::from_str(body.get());
    let manager = guarded("decoding", || {
        Box::<dyn Manager>::deserialize(TaggedDeserializer::new(
            DEPENDENCY_KEYS,
            type_name,
            &mut body_de,
        ))
    })
    .map_err(|reason| RegistryError::MalformedDependency {
        id: id.to_owned(),
        type_name: type_name.to_owned(),
        reason,
    })?;
    let registered = manager.version();
    if registered != version {
        return Err(RegistryError::DependencyVersionMismatch {
            id: id.to_owned(),
            type_name: type_name.to_owned(),
            stored: version,
            registered,
        });
    }
    Ok(Arc::from(manager))
}

/// Runs `work`, a registered type's own code (`doing` its value: its `Deserialize` or
/// `Serialize`): its error, or its panic ("`doing` it panicked: …"), is the reason the value
/// cannot be decoded or encoded. A panic is that value's fault, not its reader's or writer's
/// end (a queue's claimer would otherwise stop claiming for good, a worker completing the job
/// drop the completions it was writing for other jobs).
pub(crate) fn guarded<T, E: fmt::Display>(
    doing: &str,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(panic) => Err(format!(
            "{doing} it panicked: {}",
            amboy_core::panic_message(&*panic)
        )),
    }
}

/// Asks typetag for its registered names by deserializing a tag no type is registered under.
fn probe<T: for<'de> Deserialize<'de>>(keys: [&'static str; 2]) -> &'static [&'static str] {
    // A tag that cannot be a Rust-given name; typetag answers with every registered name.
    const PROBE: &str = "\u{0}amboy-registry-probe";
    let body = UnitDeserializer::<ProbeError>::new();
    match T::deserialize(TaggedDeserializer::new(keys, PROBE, body)) {
        Err(ProbeError::Names(names)) => names,
        // Nothing registered reaches the error with an empty list; anything else means typetag
        // changed how it reports unknown tags, which the tests of this crate would catch.
        Ok(_) | Err(ProbeError::Other(_)) => &[],
    }
}

/// Presents `{tag: name, content: body}` to a typetag trait object's deserializer.
struct TaggedDeserializer<'a, B> {
    keys: [&'static str; 2],
    name: &'a str,
    body: B,
}

impl<'a, B> TaggedDeserializer<'a, B> {
    fn new(keys: [&'static str; 2], name: &'a str, body: B) -> Self {
        TaggedDeserializer { keys, name, body }
    }
}

impl<'de, 'a, B: Deserializer<'de>> Deserializer<'de> for TaggedDeserializer<'a, B> {
    type Error = B::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedMap {
            keys: self.keys,
            name: self.name,
            body: Some(self.body),
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct TaggedMap<'a, B> {
    keys: [&'static str; 2],
    name: &'a str,
    body: Option<B>,
    next: usize,
}

impl<'de, 'a, B: Deserializer<'de>> MapAccess<'de> for TaggedMap<'a, B> {
    type Error = B::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.keys.get(self.next) {
            Some(key) => seed
                .deserialize(StrDeserializer::<Self::Error>::new(key))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let index = self.next;
        self.next += 1;
        match index {
            0 => seed.deserialize(StrDeserializer::<Self::Error>::new(self.name)),
            _ => match self.body.take() {
                Some(body) => seed.deserialize(body),
                None => Err(de::Error::custom("the content was read twice")),
            },
        }
    }
}

/// The error of a probe: the names typetag lists for an unknown tag.
#[derive(Debug)]
enum ProbeError {
    Names(&'static [&'static str]),
    Other(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Names(names) => write!(f, "registered: {names:?}"),
            ProbeError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        ProbeError::Other(message.to_string())
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        ProbeError::Names(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_types_of_amboy_are_registered() {
        let names = registered_dependency_types();
        for name in ["always", "check", "create-file", "local-file", "mock"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
            assert!(is_registered_dependency_type(name));
        }
        assert!(!is_registered_dependency_type("nope"));
        assert!(
            names.windows(2).all(|pair| pair[0] < pair[1]),
            "sorted: {names:?}"
        );
    }

    #[test]
    fn builds_a_registered_dependency() {
        let body =
            RawValue::from_string(r#"{"function_name": "f", "edges": ["a"]}"#.into()).unwrap();
        let manager = build_dependency("j", "check", 1, &body).unwrap();
        assert_eq!(manager.edges(), ["a"]);
        let err = build_dependency("j", "check", 0, &body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "job 'j' has a dependency 'check' stored at version 0, but the registered version is 1"
        );
        let err = build_dependency("j", "nope", 0, &body).unwrap_err();
        assert!(matches!(err, RegistryError::UnknownDependencyType { .. }));
    }

    /// A job type whose `Deserialize` panics.
    #[derive(Debug, serde::Serialize)]
    struct Bomb {
        base: amboy_core::Base,
    }

    impl<'de> Deserialize<'de> for Bomb {
        fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("no way back")
        }
    }

    #[typetag::serde(name = "registry-test-bomb")]
    #[async_trait::async_trait]
    impl Job for Bomb {
        fn base(&self) -> &amboy_core::Base {
            &self.base
        }

        async fn run(&self, _ctx: &amboy_core::JobContext) -> Result<(), amboy_core::JobError> {
            Ok(())
        }
    }

    /// A dependency manager whose `Deserialize` panics.
    #[derive(Debug, serde::Serialize)]
    struct BombManager;

    impl<'de> Deserialize<'de> for BombManager {
        fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("no manager either")
        }
    }

    #[typetag::serde(name = "registry-test-bomb-manager")]
    impl Manager for BombManager {
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
    fn a_panic_while_decoding_is_the_values_error() {
        let body = RawValue::from_string("{}".into()).unwrap();
        let err = build_job("j", "registry-test-bomb", 0, &body).unwrap_err();
        assert!(matches!(err, RegistryError::MalformedJob { .. }), "{err:?}");
        assert!(
            err.to_string().contains("'j'")
                && err
                    .to_string()
                    .contains("decoding it panicked: no way back"),
            "{err}"
        );
        let err = build_dependency("j", "registry-test-bomb-manager", 0, &body).unwrap_err();
        assert!(
            matches!(err, RegistryError::MalformedDependency { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("decoding it panicked: no manager either"),
            "{err}"
        );
    }
}
