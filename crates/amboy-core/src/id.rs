//! [`JobId`]: a job's ID, stored inline when short.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrayvec::ArrayString;

/// The longest ID stored inline: a hyphenated UUID (36 bytes) fits.
const INLINE: usize = 38;

/// A job's ID: a string, kept inline (no allocation, no shared counter) up to 38 bytes, which
/// holds a UUID, and shared otherwise. Queues key their maps with it; it hashes, compares and
/// borrows exactly as the `str` it holds, so maps keyed by `JobId` are looked up with `&str`.
#[derive(Clone)]
pub struct JobId(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE>),
    Shared(Arc<str>),
}

impl JobId {
    /// The ID `id`.
    pub fn new(id: &str) -> Self {
        match ArrayString::from(id) {
            Ok(inline) => JobId(Repr::Inline(inline)),
            Err(_) => JobId(Repr::Shared(Arc::from(id))),
        }
    }

    /// The ID.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(id) => id,
            Repr::Shared(id) => id,
        }
    }
}

impl Hash for JobId {
    /// Hashes as the `str` it holds, through `str`'s own `Hash`, so that `&str` lookups find it
    /// whatever the hasher does with strings.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for JobId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
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
        self.as_str().cmp(other.as_str())
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
    fn stays_small_and_keeps_uuids_inline() {
        assert!(
            std::mem::size_of::<JobId>() <= 48,
            "JobId grew to {} bytes",
            std::mem::size_of::<JobId>()
        );
        let inline = |id: &str| matches!(JobId::new(id).0, Repr::Inline(_));
        assert!(inline("0195f3c2-8a3e-7c1d-9b2a-4f6e8d0c1b2a"));
        assert!(inline(&"x".repeat(38)));
        assert!(!inline(&"x".repeat(39)));
        // The limit is in bytes: 37 bytes and a two-byte character do not fit.
        assert!(!inline(&format!("{}é", "x".repeat(37))));
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
