//! relay.v1 API: the generated protobuf types and tonic stubs, the descriptor set for server
//! reflection, and a small client ([`client::RelayClient`]).
//!
//! The proto (`control/proto/relay.proto`) documents how each RPC maps to Meta's webhooks and
//! Graph API requests; start there.

pub mod client;
pub mod codec;
pub mod json;
pub mod table;

/// Generated `relay.v1` messages, `relay_client::RelayClient` and `relay_server::Relay`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("relay.v1");
}

/// The encoded `FileDescriptorSet` of `relay.proto` (and its imports), for
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/relay_descriptor.bin"));

/// The fully qualified gRPC service name, as used by the health and reflection services.
pub const SERVICE_NAME: &str = "relay.v1.Relay";

/// The `google.rpc.ErrorInfo` domain of the relay's errors.
pub const ERROR_DOMAIN: &str = "relay.whatsapp";

/// The `ErrorInfo` metadata key and the trailing-metadata key that carry Meta's error code.
pub const META_CODE_DETAIL_KEY: &str = "meta_code";
pub const META_CODE_HEADER: &str = "meta-code";
