//! relay.v1 API: the generated protobuf types and tonic stubs, the descriptor set for server
//! reflection, and a small client ([`client::RelayClient`]).
//!
//! The proto (`control/proto/relay.proto`) documents how each RPC maps to Meta's webhooks and
//! Graph API requests; start there.

#![deny(unsafe_code)]

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

/// The environment variable every tool (relay, relayctl, loadtest, the signaling example) reads
/// the control API's bearer token from.
pub const TOKEN_ENV: &str = "RELAY_CONTROL_TOKEN";

/// `token` (from a flag or [`TOKEN_ENV`]) if given, else the value of the deprecated variable
/// `old` with a warning on stderr naming the variable to use instead.
pub fn token_or_deprecated(token: Option<String>, old: &str) -> Option<String> {
    token_or_deprecated_with(token, old, |v| std::env::var(v).ok(), |w| eprintln!("{w}"))
}

/// [`token_or_deprecated`] with the environment and the warning passed in (for tests).
pub fn token_or_deprecated_with(
    token: Option<String>,
    old: &str,
    env: impl Fn(&str) -> Option<String>,
    warn: impl FnOnce(String),
) -> Option<String> {
    if token.is_some() {
        return token;
    }
    let v = env(old).filter(|v| !v.is_empty())?;
    warn(format!(
        "warning: {old} is deprecated and will be removed; set {TOKEN_ENV} instead"
    ));
    Some(v)
}

/// The fully qualified gRPC service name, as used by the health and reflection services.
pub const SERVICE_NAME: &str = "relay.v1.Relay";

/// The `google.rpc.ErrorInfo` domain of the relay's errors.
pub const ERROR_DOMAIN: &str = "relay.whatsapp";

/// The `ErrorInfo` metadata key and the trailing-metadata key that carry Meta's error code.
pub const META_CODE_DETAIL_KEY: &str = "meta_code";
pub const META_CODE_HEADER: &str = "meta-code";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_token_variable_still_works_with_a_warning() {
        let env = |v: &str| (v == "RELAYCTL_TOKEN").then(|| "old".to_string());
        let mut warned = None;
        let t = token_or_deprecated_with(None, "RELAYCTL_TOKEN", env, |w| warned = Some(w));
        assert_eq!(t.as_deref(), Some("old"));
        assert!(warned.unwrap().contains("set RELAY_CONTROL_TOKEN instead"));
        // The new name (or the flag) wins, silently.
        let mut warned = false;
        let t =
            token_or_deprecated_with(Some("new".into()), "RELAYCTL_TOKEN", env, |_| warned = true);
        assert_eq!((t.as_deref(), warned), (Some("new"), false));
        assert_eq!(
            token_or_deprecated_with(None, "RELAY_TOKEN", env, |_| panic!("no warning")),
            None
        );
    }
}
