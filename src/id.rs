//! Group, member and lock identifiers as the caller gave them.
//!
//! Upstream tooz echoes ids back in the type they were given on some backends (a group
//! created with a `str` id is listed as `str` by the file driver), so an id remembers
//! whether it was text or bytes.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Bytes(Vec<u8>),
    Text(String),
}

impl Id {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Id::Bytes(b) => b,
            Id::Text(s) => s.as_bytes(),
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Id::Text(_))
    }

    /// The id rebuilt from stored bytes: text when it was stored as text (and still decodes).
    pub fn from_stored(bytes: Vec<u8>, text: bool) -> Id {
        if text {
            match String::from_utf8(bytes) {
                Ok(s) => Id::Text(s),
                Err(e) => Id::Bytes(e.into_bytes()),
            }
        } else {
            Id::Bytes(bytes)
        }
    }
}

impl From<&[u8]> for Id {
    fn from(b: &[u8]) -> Self {
        Id::Bytes(b.to_vec())
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::Text(s.to_owned())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Text(s) => f.write_str(s),
            Id::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
        }
    }
}
