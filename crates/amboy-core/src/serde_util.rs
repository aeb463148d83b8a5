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

/// A time that may be unset, as amboy writes it: RFC 3339, in any offset and with up to
/// nanoseconds. Go's encoding/json ignores `omitempty` on `time.Time`, so amboy writes every
/// unset time as Go's zero time, `0001-01-01T00:00:00Z`; that time decodes as `None`, as does
/// any time within a day of it (a zero time Go formats in another zone carries that zone's
/// offset, cut to whole minutes). No job has a real time in year 1. `None` is left out when
/// encoding (`skip_serializing_if = "Option::is_none"`), which Go decodes as its zero time.
pub(crate) mod go_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Go's zero time, `0001-01-01T00:00:00Z`, in seconds since the Unix epoch.
    const GO_ZERO_UNIX_SECONDS: i64 = -62_135_596_800;
    const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        let time = Option::<DateTime<Utc>>::deserialize(deserializer)?;
        Ok(time.filter(|time| !is_go_zero(time)))
    }

    /// Whether `time` is Go's zero time, as Go may write it.
    pub(crate) fn is_go_zero(time: &DateTime<Utc>) -> bool {
        (time.timestamp() - GO_ZERO_UNIX_SECONDS).abs() < SECONDS_PER_DAY
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

/// A Go `int` where zero or less means "the default" (amboy's `max_attempts`): a negative
/// value decodes as 0, which means the same here.
pub(crate) mod default_if_negative {
    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if value < 0 {
            return Ok(0);
        }
        u32::try_from(value)
            .map_err(|_| serde::de::Error::custom(format!("{value} is larger than {}", u32::MAX)))
    }
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

pub(crate) fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}
