//! Serde helpers for amboy's wire forms.

/// A `std::time::Duration` as integer nanoseconds, as Go's `time.Duration` is serialized.
pub(crate) mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let nanos = i64::try_from(value.as_nanos()).unwrap_or(i64::MAX);
        serializer.serialize_i64(nanos)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let nanos = i64::deserialize(deserializer)?;
        u64::try_from(nanos)
            .map(Duration::from_nanos)
            .map_err(|_| serde::de::Error::custom(format!("duration of {nanos}ns is negative")))
    }

    pub(crate) fn is_zero(value: &Duration) -> bool {
        value.is_zero()
    }
}

/// A lock owner: the empty string on the wire means "no owner".
pub(crate) mod owner {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Arc<str>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value.as_deref().unwrap_or(""))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Arc<str>>, D::Error> {
        let owner = Option::<String>::deserialize(deserializer)?;
        Ok(owner.filter(|owner| !owner.is_empty()).map(Arc::from))
    }
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

pub(crate) fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}
