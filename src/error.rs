//! The one error type of the core. `src/py/errors.rs` maps each variant onto the tooz
//! exception tree, once.

use crate::id::Id;

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum Error {
    #[error("Group {0} does not exist")]
    GroupNotCreated(Id),
    #[error("Group {0} already exists")]
    GroupAlreadyExist(Id),
    #[error("Member {member} has already joined {group}")]
    MemberAlreadyExist { group: Id, member: Id },
    #[error("Member {member} has not joined {group}")]
    MemberNotJoined { group: Id, member: Id },
    #[error("Group {0} is not empty")]
    GroupNotEmpty(Id),
    /// The backend cannot be reached (or was lost).
    #[error("{0}")]
    Connection(String),
    /// An operation did not finish within its time budget.
    #[error("{0}")]
    Timeout(String),
    /// A value could not be encoded or decoded.
    #[error("{0}")]
    Serialization(String),
    /// The backend does not offer this operation (upstream raises `tooz.NotImplemented`).
    #[error("{0}")]
    NotImplemented(String),
    /// A caller-supplied value (option, name, id) is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// Anything else the backend reported.
    #[error("{0}")]
    Tooz(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: &str, err: std::io::Error) -> Error {
        Error::Tooz(format!("{context}: {err}"))
    }
}
