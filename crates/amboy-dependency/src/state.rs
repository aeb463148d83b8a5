use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DependencyError;

/// The state of a job's dependencies, which decides whether a queue may run the job.
///
/// Serialized as amboy's integer codes: `Ready = 0`, `Passed = 1`, `Blocked = 2`, `Unresolved = 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum State {
    /// The job's dependencies are satisfied: run it.
    #[default]
    Ready = 0,
    /// There is nothing to do: the job's work is already done, so it completes without running.
    Passed = 1,
    /// The job waits for the jobs it depends on.
    Blocked = 2,
    /// The dependencies can never be satisfied (a cycle, a missing input, an unknown check).
    Unresolved = 3,
}

impl State {
    /// Every state, in code order.
    pub const ALL: [State; 4] = [
        State::Ready,
        State::Passed,
        State::Blocked,
        State::Unresolved,
    ];

    /// Whether `code` is the integer code of a state (amboy's `IsValidState`).
    pub fn is_valid(code: i32) -> bool {
        (0..=3).contains(&code)
    }

    /// The integer code of this state.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// amboy's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "Ready",
            State::Passed => "Passed",
            State::Blocked => "Blocked",
            State::Unresolved => "Unresolved",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<i32> for State {
    type Error = DependencyError;

    fn try_from(code: i32) -> Result<Self, Self::Error> {
        match code {
            0 => Ok(State::Ready),
            1 => Ok(State::Passed),
            2 => Ok(State::Blocked),
            3 => Ok(State::Unresolved),
            other => Err(DependencyError::InvalidState(other)),
        }
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(self.code())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = i32::deserialize(deserializer)?;
        State::try_from(code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_match_amboy() {
        let expected = [
            (0, "Ready"),
            (1, "Passed"),
            (2, "Blocked"),
            (3, "Unresolved"),
        ];
        for (state, (code, name)) in State::ALL.into_iter().zip(expected) {
            assert_eq!(state.code(), code);
            assert_eq!(state.to_string(), name);
            assert_eq!(State::try_from(code).unwrap(), state);
            assert!(State::is_valid(code));
        }
    }

    #[test]
    fn invalid_codes_are_rejected() {
        for code in [-1, 4, 100] {
            assert!(!State::is_valid(code));
            let err = State::try_from(code).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{code} is not a valid dependency state")
            );
        }
    }

    #[test]
    fn serializes_as_integer() {
        assert_eq!(serde_json::to_string(&State::Blocked).unwrap(), "2");
        assert_eq!(
            serde_json::from_str::<State>("3").unwrap(),
            State::Unresolved
        );
        assert!(serde_json::from_str::<State>("7").is_err());
    }

    #[test]
    fn default_is_ready() {
        assert_eq!(State::default(), State::Ready);
    }
}
