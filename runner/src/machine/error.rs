use thiserror::Error;

/// Why a machine operation did not do what the test script asked. The kind decides how Python sees it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpError {
    /// The guest answered, but not as required (a command failed, a unit failed, the VM exited).
    #[error("{0}")]
    Failure(String),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The request itself was wrong (unknown machine, bad regex, missing argument).
    #[error("{0}")]
    BadRequest(String),
}

impl OpError {
    pub fn kind(&self) -> &'static str {
        match self {
            OpError::Failure(_) => "failure",
            OpError::Timeout(_) => "timeout",
            OpError::BadRequest(_) => "bad_request",
        }
    }
}

pub type OpResult<T> = Result<T, OpError>;
