//! Typed identifiers. Every id is one NATS subject token: non-empty, at most 128 bytes, and free of
//! `.`, `*`, `>` and whitespace. An invalid id is refused where it enters, never escaped.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid id token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id kind was being parsed.
        kind: &'static str,
    },
    /// The string was longer than [`MAX_ID_LEN`].
    #[error("{kind} is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Which id kind was being parsed.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The string held a character that is not allowed in a subject token.
    #[error("{kind} {value:?} contains {found:?}, which is not allowed in a subject token")]
    BadChar {
        /// Which id kind was being parsed.
        kind: &'static str,
        /// The offending value.
        value: String,
        /// The first offending character.
        found: char,
    },
}

/// Checks that `value` can be used as one NATS subject token.
pub fn validate_token(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: value.len() });
    }
    if let Some(found) =
        value.chars().find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(IdError::BadChar { kind, value: value.to_owned(), found });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(
            #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^.*>\s]+$"))] String,
        );

        impl $name {
            /// Parses and validates an id.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_token($kind, &value)?;
                Ok(Self(value))
            }

            /// A fresh random id with this kind's prefix.
            pub fn generate() -> Self {
                let raw = uuid::Uuid::new_v4().simple().to_string();
                Self(format!("{}-{}", $prefix, &raw[..12]))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// One hive, usually one per machine.
    HiveId,
    "hive id",
    "hive"
);
id_type!(
    /// One worker process.
    WorkerId,
    "worker id",
    "wrk"
);
id_type!(
    /// One inference job.
    JobId,
    "job id",
    "job"
);
id_type!(
    /// A model in a hive's catalog, as clients name it (for example `smollm2-135m-instruct`).
    ModelId,
    "model id",
    "model"
);
id_type!(
    /// The queen instance (one per cluster, but restarts get a new epoch, not a new id).
    QueenId,
    "queen id",
    "queen"
);
id_type!(
    /// One model download on a hive, chosen by whoever asks for it.
    PullId,
    "pull id",
    "pull"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_tokens_that_would_change_the_subject() {
        for bad in ["", "a.b", "a*", ">", "a b", "tab\there", "new\nline"] {
            assert!(WorkerId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(WorkerId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert_eq!(WorkerId::new("wrk-1").map(|id| id.to_string()).ok(), Some("wrk-1".into()));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<HiveId>("\"a.b\"").is_err());
        assert!(serde_json::from_str::<HiveId>("\"hive-a\"").is_ok());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        assert!(JobId::new(a.as_str()).is_ok());
        assert!(a.as_str().starts_with("job-"));
    }
}
