//! The call's own errors: what a request to a call (create, a remote description, a
//! transfer) can fail with, in the call's terms. The control plane maps them to its API errors
//! (`impl From<CallError> for crate::api::ApiError`), so the state machine knows nothing of
//! gRPC codes or Meta's policy codes.

/// Why the call refused a request. Nothing changed in the call when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request itself is wrong: SDP that does not parse or validate (with the offending
    /// line), crypto that does not match ours, a missing description.
    #[error("invalid parameter: {0}")]
    InvalidArgument(String),
    /// The request does not fit the call's state (a second, different description; a
    /// transfer after the end).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The call cannot be built from what the relay bound for it (no WhatsApp-facing socket).
    #[error("internal error: {0}")]
    Internal(String),
}
