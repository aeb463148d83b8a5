//! [`LogRecord`]: one `tracing` event as a sink receives it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level};

/// One `tracing` event, taken apart when it was logged: what a [`Sink`](crate::Sink) receives.
///
/// The event's `message` field becomes [`message`](LogRecord::message); its other fields keep
/// their types where JSON has one (strings, integers, floats, booleans) and are formatted with
/// `Debug` (or `Display`, for errors) otherwise.
///
/// Serialized (with serde), the level is its name (`"INFO"`) and the timestamp RFC 3339; empty
/// fields, spans and absent locations are left out.
///
/// ```
/// use amboy_logger::LogRecord;
/// use tracing::Level;
///
/// let record = LogRecord::new(Level::WARN, "app::billing", "card declined")
///     .with_field("attempt", 3);
/// let json = serde_json::to_value(&record).unwrap();
/// assert_eq!(json["level"], "WARN");
/// assert_eq!(json["fields"]["attempt"], 3);
/// assert_eq!(serde_json::from_value::<LogRecord>(json).unwrap(), record);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogRecord {
    /// The event's level.
    #[serde(with = "level_name")]
    pub level: Level,
    /// The event's target (by default, the module path of the code that logged it).
    pub target: String,
    /// The event's `message` field; empty if it had none.
    pub message: String,
    /// The event's other fields, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
    /// When the event was logged.
    pub timestamp: DateTime<Utc>,
    /// The names of the spans the event was logged in, outermost first; empty outside spans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<String>,
    /// The module that logged the event, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_path: Option<String>,
    /// The source file that logged the event, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line of [`file`](LogRecord::file) that logged the event, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

impl LogRecord {
    /// A record logged now, without fields, spans or location.
    pub fn new(level: Level, target: impl Into<String>, message: impl Into<String>) -> Self {
        LogRecord {
            level,
            target: target.into(),
            message: message.into(),
            fields: BTreeMap::new(),
            timestamp: Utc::now(),
            spans: Vec::new(),
            module_path: None,
            file: None,
            line: None,
        }
    }

    /// The same record with the field `name` set to `value`.
    pub fn with_field(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(name.into(), value.into());
        self
    }

    /// The record of `event`, logged in the spans named `spans` (outermost first).
    pub(crate) fn from_event(event: &Event<'_>, spans: Vec<String>) -> Self {
        let metadata = event.metadata();
        let mut record = LogRecord {
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            message: String::new(),
            fields: BTreeMap::new(),
            timestamp: Utc::now(),
            spans,
            module_path: metadata.module_path().map(str::to_owned),
            file: metadata.file().map(str::to_owned),
            line: metadata.line(),
        };
        event.record(&mut FieldVisitor(&mut record));
        record
    }
}

/// Copies an event's fields into a record.
struct FieldVisitor<'a>(&'a mut LogRecord);

impl FieldVisitor<'_> {
    fn insert(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.0.message = match value {
                Value::String(message) => message,
                other => other.to_string(),
            };
        } else {
            self.0.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let value =
            i64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::from);
        self.insert(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let value =
            u64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::from);
        self.insert(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::from(format!("{value:?}")));
    }
}

/// A level as its name: `"TRACE"` … `"ERROR"`.
mod level_name {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use tracing::Level;

    pub(super) fn serialize<S: Serializer>(
        level: &Level,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(level.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Level, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Str(&name), &"a level from TRACE to ERROR")
        })
    }
}
