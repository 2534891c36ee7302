//! [`ApiError`] → gRPC [`Status`], with Meta's error code where a client can read it.
//!
//! The code travels twice (see relay.proto): as a `google.rpc.ErrorInfo` detail (rich clients)
//! and as `meta-code` trailing metadata (grpcurl, clients without the richer error model).

use std::collections::HashMap;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use control::{ERROR_DOMAIN, META_CODE_DETAIL_KEY, META_CODE_HEADER};

use crate::api::ApiError;

pub fn to_status(e: &ApiError) -> Status {
    let mut info: HashMap<String, String> = HashMap::new();
    let (code, reason) = match e {
        ApiError::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_PARAMETER"),
        ApiError::NotFound(id) => {
            info.insert("call_id".into(), id.clone());
            (Code::NotFound, "NOT_FOUND")
        }
        ApiError::CallLimit { number, limit } => {
            info.insert("business_number".into(), number.clone());
            info.insert("limit".into(), limit.to_string());
            (Code::ResourceExhausted, "CALL_LIMIT")
        }
        ApiError::DuplicateCall {
            number,
            consumer,
            existing,
        } => {
            info.insert("business_number".into(), number.clone());
            info.insert("consumer".into(), consumer.clone());
            info.insert("existing_call_id".into(), existing.clone());
            (Code::AlreadyExists, "DUPLICATE_CALL")
        }
        ApiError::FailedPrecondition(_) => (Code::FailedPrecondition, "FAILED_PRECONDITION"),
        ApiError::Terminated(id) => {
            info.insert("call_id".into(), id.clone());
            (Code::FailedPrecondition, "CALL_TERMINATED")
        }
        ApiError::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
        ApiError::BotUnreachable(_) => (Code::Unavailable, "BOT_UNREACHABLE"),
        ApiError::Internal(_) => (Code::Internal, "INTERNAL"),
    };
    let mut metadata = MetadataMap::new();
    if let Some(meta) = e.meta_code() {
        info.insert(META_CODE_DETAIL_KEY.into(), meta.to_string());
        metadata.insert(META_CODE_HEADER, meta.into());
    }
    Status::with_error_details_and_metadata(
        code,
        e.to_string(),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, info),
        metadata,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_limit_carries_138002_both_ways() {
        let s = to_status(&ApiError::CallLimit {
            number: "1555".into(),
            limit: 1000,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(control::client::meta_code(&s), Some(138002));
        assert_eq!(
            s.metadata()
                .get(META_CODE_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("138002")
        );
        let details = s.get_error_details();
        let info = details.error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "CALL_LIMIT");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata.get("limit").map(String::as_str), Some("1000"));
    }

    #[test]
    fn codes_without_meta_code_have_no_header() {
        let s = to_status(&ApiError::NotFound("wacid.x".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(control::client::meta_code(&s), None);
        assert!(s.metadata().get(META_CODE_HEADER).is_none());
        assert!(s.message().contains("wacid.x"));
    }
}
