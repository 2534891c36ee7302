//! Voice-bot legs: the internal leg is a bot behind a WebSocket (Twilio Media Streams
//! framing, μ-law 8 kHz, or raw 16-bit PCM at 16 kHz) instead of an RTP peer.
//!
//! - [`protocol`]: the messages, sans-IO.
//! - [`link`]: the lock-free queues between the call on its shard and the WebSocket task, and
//!   why this leg (alone) crosses threads.
//! - [`playout`]: the bot's audio toward WhatsApp on a 20 ms clock, marks and clear.
//! - [`client`]: the WebSocket itself (connect, TLS, the task that pumps the link).
//!
//! The call side (Opus decode and encode, the RTP the bot's audio becomes, how it joins the
//! call's path toward WhatsApp) is `crate::call::bot`.

#[allow(unsafe_code)] // registering the doorbell eventfd with tokio
pub mod client;
#[allow(unsafe_code)] // the doorbell eventfd
pub mod link;
pub mod playout;
pub mod protocol;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use control::pb;

pub use client::BotConnector;
pub use protocol::MediaFormat;

use crate::api::ApiError;

/// Headers a signaling tier may add to the upgrade request, at most.
pub const MAX_HEADERS: usize = 32;
/// Custom parameters in `start`, at most.
pub const MAX_CUSTOM_PARAMETERS: usize = 64;
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Where a bot is and what it speaks (from `InternalLeg.websocket`).
#[derive(Clone, PartialEq, Eq)]
pub struct BotTarget {
    /// `ws://` or `wss://`, validated.
    pub url: String,
    /// Extra upgrade-request headers, the bearer token's `authorization` among them.
    pub headers: Vec<(String, String)>,
    /// `start.customParameters`, sorted by key.
    pub custom_parameters: Vec<(String, String)>,
    pub format: MediaFormat,
}

/// Header values (tokens, API keys) never reach logs.
impl fmt::Debug for BotTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotTarget")
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("custom_parameters", &self.custom_parameters)
            .field("format", &self.format)
            .finish()
    }
}

/// The relay's settings for bot legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotConfig {
    /// PEM file of CA certificates trusted for `wss://` besides the system's roots (a private
    /// CA, a test CA).
    pub ca_file: Option<PathBuf>,
    /// How long connecting (TCP, TLS, upgrade) may take before CreateCall fails.
    pub connect_timeout: Duration,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

/// Upgrade-request headers the WebSocket handshake sets itself.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "content-length",
];

/// `InternalLeg.websocket` → a validated [`BotTarget`].
pub fn target_from_pb(ws: pb::WebSocketLeg) -> Result<BotTarget, ApiError> {
    let format = match pb::BotAudioFormat::try_from(ws.format) {
        Ok(pb::BotAudioFormat::Unspecified | pb::BotAudioFormat::Mulaw8k) => MediaFormat::Mulaw8k,
        Ok(pb::BotAudioFormat::L1616k) => MediaFormat::L16_16k,
        Err(_) => {
            return Err(invalid(format!(
                "internal.websocket.format: unknown value {}",
                ws.format
            )));
        }
    };
    let url = validate_url(&ws.url)?;
    let mut headers = Vec::new();
    if !ws.bearer_token.is_empty() {
        let v = format!("Bearer {}", ws.bearer_token);
        check_header("authorization", &v, "internal.websocket.bearer_token")?;
        headers.push(("authorization".to_string(), v));
    }
    if ws.headers.len() > MAX_HEADERS {
        return Err(invalid(format!(
            "internal.websocket.headers: {} headers; at most {MAX_HEADERS}",
            ws.headers.len()
        )));
    }
    let mut extra: Vec<(String, String)> = ws.headers.into_iter().collect();
    extra.sort();
    for (k, v) in extra {
        let name = k.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("sec-websocket-") {
            return Err(invalid(format!(
                "internal.websocket.headers: {k} is set by the WebSocket handshake itself"
            )));
        }
        if name == "authorization" && !ws.bearer_token.is_empty() {
            return Err(invalid(
                "internal.websocket: both bearer_token and an authorization header",
            ));
        }
        check_header(&name, &v, "internal.websocket.headers")?;
        headers.push((name, v));
    }
    if ws.custom_parameters.len() > MAX_CUSTOM_PARAMETERS {
        return Err(invalid(format!(
            "internal.websocket.custom_parameters: {} parameters; at most \
             {MAX_CUSTOM_PARAMETERS}",
            ws.custom_parameters.len()
        )));
    }
    let mut custom_parameters: Vec<(String, String)> = ws.custom_parameters.into_iter().collect();
    custom_parameters.sort();
    for (k, v) in &custom_parameters {
        if k.is_empty() || k.len() > protocol::MAX_PARAM_LEN || v.len() > protocol::MAX_PARAM_LEN {
            return Err(invalid(format!(
                "internal.websocket.custom_parameters: keys must be 1 to {} bytes and values \
                 at most {} (key {k:?})",
                protocol::MAX_PARAM_LEN,
                protocol::MAX_PARAM_LEN
            )));
        }
    }
    Ok(BotTarget {
        url,
        headers,
        custom_parameters,
        format,
    })
}

fn validate_url(url: &str) -> Result<String, ApiError> {
    let field = "internal.websocket.url";
    if url.is_empty() {
        return Err(invalid(format!(
            "{field} is required with INTERNAL_TRANSPORT_WEBSOCKET"
        )));
    }
    if url.len() > MAX_URL_LEN {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {MAX_URL_LEN}",
            url.len()
        )));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(format!("{field} {url:?} does not parse: {e}")))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        _ => {
            return Err(invalid(format!(
                "{field} {url:?}: the scheme must be ws:// or wss://"
            )));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(format!("{field} {url:?} has no host")));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(format!(
            "{field}: credentials in the URL are refused; use bearer_token or headers"
        )));
    }
    Ok(url.to_string())
}

fn check_header(name: &str, value: &str, field: &str) -> Result<(), ApiError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(format!("{field}: {name:?} is not a valid header name")))?;
    http::HeaderValue::from_str(value).map_err(|_| {
        invalid(format!(
            "{field}: the value of {name} is not a valid header value"
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(url: &str) -> pb::WebSocketLeg {
        pb::WebSocketLeg {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bot_target_is_validated() {
        let mut leg = ws("wss://bot.example.com/media?x=1");
        leg.bearer_token = "s3cret".into();
        leg.headers.insert("X-Api-Key".into(), "k".into());
        leg.custom_parameters.insert("b".into(), "2".into());
        leg.custom_parameters.insert("a".into(), "1".into());
        leg.format = pb::BotAudioFormat::L1616k.into();
        let t = target_from_pb(leg).expect("valid");
        assert_eq!(t.url, "wss://bot.example.com/media?x=1");
        assert_eq!(
            t.headers,
            vec![
                ("authorization".into(), "Bearer s3cret".into()),
                ("x-api-key".into(), "k".into())
            ]
        );
        assert_eq!(
            t.custom_parameters,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(t.format, MediaFormat::L16_16k);
        assert!(
            !format!("{t:?}").contains("s3cret"),
            "tokens stay out of logs"
        );
        assert_eq!(
            target_from_pb(ws("ws://127.0.0.1:9000"))
                .expect("valid")
                .format,
            MediaFormat::Mulaw8k
        );
    }

    #[test]
    fn bad_bot_targets_are_invalid_arguments() {
        for url in [
            "",
            "http://bot.example.com/",
            "wss://",
            "bot.example.com",
            "wss://user:pw@bot.example.com/",
            "wss://bad host/",
        ] {
            assert!(
                matches!(target_from_pb(ws(url)), Err(ApiError::InvalidArgument(_))),
                "{url:?}"
            );
        }
        let mut leg = ws("ws://h/");
        leg.headers.insert("Sec-WebSocket-Key".into(), "x".into());
        assert!(target_from_pb(leg).is_err());
        let mut leg = ws("ws://h/");
        leg.headers.insert("x".into(), "a\nb".into());
        assert!(target_from_pb(leg).is_err());
        let mut leg = ws("ws://h/");
        leg.bearer_token = "a\r\nx: y".into();
        assert!(target_from_pb(leg).is_err());
        let mut leg = ws("ws://h/");
        leg.format = 9;
        assert!(target_from_pb(leg).is_err());
        let mut leg = ws("ws://h/");
        leg.custom_parameters.insert(String::new(), "x".into());
        assert!(target_from_pb(leg).is_err());
    }
}
