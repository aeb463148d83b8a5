//! [`JobId`]: a job's ID, stored inline when short.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The longest ID stored inline: a hyphenated UUID (36 bytes) fits.
const INLINE: usize = 38;

/// A job's ID: a string, kept inline (no allocation, no shared counter) up to 38 bytes, which
/// holds a UUID, and shared otherwise. Queues key their maps with it; it hashes, compares and
/// borrows exactly as the `str` it holds, so maps keyed by `JobId` are looked up with `&str`.
#[derive(Clone)]
pub struct JobId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl JobId {
    /// The ID `id`.
    pub fn new(id: &str) -> Self {
        if id.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            JobId(Repr::Inline {
                len: id.len() as u8,
                bytes,
            })
        } else {
            JobId(Repr::Shared(Arc::from(id)))
        }
    }

    /// The ID's bytes (UTF-8).
    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(id) => id.as_bytes(),
        }
    }

    /// The ID.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built from a `&str` and never changed: always valid UTF-8.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("a JobId holds UTF-8")
            }
            Repr::Shared(id) => id,
        }
    }
}

impl Hash for JobId {
    /// Hashes as the `str` it holds does (its bytes, then `0xff`), without re-reading them as
    /// UTF-8, so that `&str` lookups find it.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.bytes());
        state.write_u8(0xff);
    }
}

impl PartialEq for JobId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for JobId {}

impl PartialOrd for JobId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for JobId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl std::ops::Deref for JobId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        JobId::new(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn short_and_long_ids_read_back() {
        for id in [
            "",
            "a",
            "0195f3c2-8a3e-7c1d-9b2a-4f6e8d0c1b2a",
            &"x".repeat(38),
            &"y".repeat(39),
            "héllo-wörld",
        ] {
            let job_id = JobId::new(id);
            assert_eq!(job_id.as_str(), id);
            assert_eq!(job_id.to_string(), id);
            assert_eq!(job_id.clone(), job_id);
        }
    }

    #[test]
    fn hashes_as_its_str() {
        let build = std::collections::hash_map::RandomState::new();
        for id in ["short", &"z".repeat(64)] {
            assert_eq!(build.hash_one(JobId::new(id)), build.hash_one(id));
        }
        let mut map: HashMap<JobId, u32> = HashMap::new();
        map.insert(JobId::new("job-1"), 1);
        map.insert(JobId::new(&"long-".repeat(20)), 2);
        assert_eq!(map.get("job-1"), Some(&1));
        assert_eq!(map.get("long-".repeat(20).as_str()), Some(&2));
        assert_eq!(map.get("job-2"), None);
    }

    #[test]
    fn orders_as_its_str() {
        let mut ids: Vec<JobId> = ["b", "a", "c"].into_iter().map(JobId::new).collect();
        ids.sort();
        assert_eq!(
            ids.iter().map(JobId::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
