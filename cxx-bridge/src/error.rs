use thiserror::Error;

/// Why a plan document was rejected. Messages read well after "invalid plan: ".
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// The document is not JSON of the plan's shape (serde's message carries the field and position).
    #[error("{0}")]
    Syntax(String),
    /// `schema` names a version this build does not read.
    #[error(
        "unsupported schema `{0}`: this testrig reads `testrig-plan/1` and nixpkgs' driverConfiguration.json (no `schema` field)"
    )]
    UnsupportedSchema(String),
    /// A field has a value of the right type but not an acceptable one.
    #[error("`{field}` {problem}")]
    Field { field: String, problem: String },
}

impl PlanError {
    pub(crate) fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        PlanError::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
