use std::collections::HashSet;
use std::fmt;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DependencyError;

/// A reusable, thread-safe store of dependency edges (the IDs of jobs depended on).
///
/// Serialized as a plain list of IDs. Unlike amboy's `JobEdges`, it is safe to share between
/// tasks: a lock guards the list.
#[derive(Default)]
pub struct JobEdges {
    inner: Mutex<Edges>,
}

#[derive(Default, Clone)]
struct Edges {
    order: Vec<String>,
    set: HashSet<String>,
}

impl JobEdges {
    /// An empty edge store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the edges, in the order they were added.
    pub fn edges(&self) -> Vec<String> {
        self.inner.lock().order.clone()
    }

    /// Adds an edge; an edge that exists already is an error naming it.
    pub fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
        let mut inner = self.inner.lock();
        if !inner.set.insert(id.to_owned()) {
            return Err(DependencyError::EdgeExists(id.to_owned()));
        }
        inner.order.push(id.to_owned());
        Ok(())
    }

    /// Whether `id` is an edge.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock().set.contains(id)
    }

    /// The number of edges.
    pub fn len(&self) -> usize {
        self.inner.lock().order.len()
    }

    /// Whether there are no edges.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for JobEdges {
    fn clone(&self) -> Self {
        JobEdges {
            inner: Mutex::new(self.inner.lock().clone()),
        }
    }
}

impl fmt::Debug for JobEdges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.inner.lock().order.iter())
            .finish()
    }
}

impl<S: Into<String>> FromIterator<S> for JobEdges {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut edges = Edges::default();
        for id in iter {
            let id = id.into();
            if edges.set.insert(id.clone()) {
                edges.order.push(id);
            }
        }
        JobEdges {
            inner: Mutex::new(edges),
        }
    }
}

impl Serialize for JobEdges {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.lock().order.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JobEdges {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let order = Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default();
        Ok(order.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_store_is_empty() {
        let edges = JobEdges::new();
        assert!(edges.is_empty());
        assert!(edges.edges().is_empty());
    }

    #[test]
    fn adding_edges_keeps_order() {
        let edges = JobEdges::new();
        for id in ["c", "a", "b"] {
            edges.add_edge(id).unwrap();
        }
        assert_eq!(edges.edges(), ["c", "a", "b"]);
        assert_eq!(edges.len(), 3);
        assert!(edges.contains("a"));
        assert!(!edges.contains("d"));
    }

    #[test]
    fn duplicate_edge_is_an_error_naming_it() {
        let edges = JobEdges::new();
        edges.add_edge("foo").unwrap();
        let err = edges.add_edge("foo").unwrap_err();
        assert_eq!(err.to_string(), "edge 'foo' already exists");
        assert_eq!(edges.len(), 1);
    }

    #[test]
    fn edges_returns_a_copy() {
        let edges = JobEdges::new();
        edges.add_edge("a").unwrap();
        let mut copy = edges.edges();
        copy.push("b".into());
        assert_eq!(edges.edges(), ["a"]);
    }

    #[test]
    fn round_trips_and_rebuilds_the_set() {
        let edges = JobEdges::new();
        edges.add_edge("a").unwrap();
        edges.add_edge("b").unwrap();
        let json = serde_json::to_string(&edges).unwrap();
        assert_eq!(json, r#"["a","b"]"#);
        let back: JobEdges = serde_json::from_str(&json).unwrap();
        assert_eq!(back.edges(), ["a", "b"]);
        // The duplicate check works after decoding, which amboy had to patch by hand.
        assert!(back.add_edge("a").is_err());
        back.add_edge("c").unwrap();
        let null: JobEdges = serde_json::from_str("null").unwrap();
        assert!(null.is_empty());
    }

    #[test]
    fn concurrent_adds_keep_every_edge_once() {
        let edges = std::sync::Arc::new(JobEdges::new());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let edges = edges.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        // Every thread tries every ID; each ID must be accepted exactly once.
                        let _ = edges.add_edge(&format!("job-{}", (i + t) % 100));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(edges.len(), 100);
    }
}
