//! The managers' bodies as amboy (Go) writes them: each carries its own `type`
//! (`{"name": …, "version": …}`) beside its fields, lists may be `null`, and the `check`
//! manager nests its edges (`"edges": {"edges": […]}`).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::{JobEdges, Manager};

/// A manager's `type` field: its registered name and version.
#[derive(Serialize)]
pub(crate) struct TypeField {
    name: &'static str,
    version: i32,
}

impl TypeField {
    pub(crate) fn of<M: Manager>(manager: &M) -> Self {
        TypeField {
            name: manager.typetag_name(),
            version: manager.version(),
        }
    }
}

/// A list that Go may write as `null` (a nil slice): `null` decodes as empty.
pub(crate) fn null_as_empty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Edges nested as amboy's `check` manager writes them, `{"edges": […]}` (its `JobEdges` is a
/// tagged embedded struct).
pub(crate) struct NestedEdges<'a>(pub(crate) &'a JobEdges);

impl Serialize for NestedEdges<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut nested = serializer.serialize_struct("JobEdges", 1)?;
        nested.serialize_field("edges", self.0)?;
        nested.end()
    }
}

/// Reads edges nested as [`NestedEdges`] writes them, or a plain list (as earlier versions of
/// this crate wrote them), or `null`.
pub(crate) fn nested_or_flat_edges<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<JobEdges, D::Error> {
    deserializer.deserialize_any(EdgesVisitor)
}

struct EdgesVisitor;

impl<'de> Visitor<'de> for EdgesVisitor {
    type Value = JobEdges;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of edges, or an object holding one under `edges`")
    }

    fn visit_unit<E: de::Error>(self) -> Result<JobEdges, E> {
        Ok(JobEdges::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<JobEdges, E> {
        Ok(JobEdges::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<JobEdges, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JobEdges, A::Error> {
        let mut edges = Vec::new();
        while let Some(edge) = seq.next_element::<String>()? {
            edges.push(edge);
        }
        Ok(edges.into_iter().collect())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JobEdges, A::Error> {
        let mut edges = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "edges" {
                if edges.is_some() {
                    return Err(de::Error::duplicate_field("edges"));
                }
                edges = Some(map.next_value::<JobEdges>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(edges.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{Always, CheckManager, CreatesFile, JobEdges, LocalFile, Manager};

    fn edges(ids: &[&str]) -> JobEdges {
        ids.iter().copied().collect()
    }

    #[test]
    fn managers_write_amboys_bodies() {
        fn body<M: Manager + serde::Serialize>(manager: &M) -> serde_json::Value {
            serde_json::to_value(manager).unwrap()
        }
        let cases = [
            (
                body(&Always::new()),
                json!({"type": {"name": "always", "version": 0}, "edges": []}),
            ),
            (
                body(&Always {
                    edges: edges(&["a"]),
                }),
                json!({"type": {"name": "always", "version": 0}, "edges": ["a"]}),
            ),
            (
                body(&CreatesFile::new("/tmp/out")),
                json!({
                    "file_name": "/tmp/out", "type": {"name": "create-file", "version": 0},
                    "edges": []
                }),
            ),
            (
                body(&LocalFile::new("out", ["in"])),
                json!({
                    "targets": ["out"], "dependencies": ["in"],
                    "type": {"name": "local-file", "version": 0}, "edges": []
                }),
            ),
            (
                body(&CheckManager {
                    function_name: "f".into(),
                    edges: edges(&["a", "b"]),
                }),
                json!({
                    "function_name": "f", "type": {"name": "check", "version": 1},
                    "edges": {"edges": ["a", "b"]}
                }),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(body, expected);
        }
    }

    #[test]
    fn managers_read_amboys_bodies() {
        let always: Always = serde_json::from_value(
            json!({"type": {"name": "always", "version": 0}, "edges": ["x"]}),
        )
        .unwrap();
        assert_eq!(always.edges(), ["x"]);
        // Go writes nil slices as null.
        let local: LocalFile = serde_json::from_value(json!({
            "targets": null, "dependencies": null,
            "type": {"name": "local-file", "version": 0}, "edges": null
        }))
        .unwrap();
        assert!(local.targets.is_empty() && local.dependencies.is_empty());
        assert!(local.edges.is_empty());
        let check: CheckManager = serde_json::from_value(json!({
            "function_name": "f", "type": {"name": "check", "version": 1},
            "edges": {"edges": ["a", "b"]}
        }))
        .unwrap();
        assert_eq!(check.edges(), ["a", "b"]);
        assert!(
            check.add_edge("a").is_err(),
            "the duplicate check holds after decoding"
        );
        for nested in [json!({"edges": null}), json!({}), json!(null)] {
            let check: CheckManager =
                serde_json::from_value(json!({"function_name": "f", "edges": nested})).unwrap();
            assert!(check.edges.is_empty(), "{nested}");
        }
        // The plain list earlier versions wrote.
        let check: CheckManager =
            serde_json::from_value(json!({"function_name": "f", "edges": ["c"]})).unwrap();
        assert_eq!(check.edges(), ["c"]);
        let err = serde_json::from_value::<CheckManager>(json!({"function_name": "f", "edges": 7}))
            .unwrap_err();
        assert!(err.to_string().contains("a list of edges"), "{err}");
    }
}
