//! The gRPC server (`relay.v1`) over [`crate::api::CallControl`].
