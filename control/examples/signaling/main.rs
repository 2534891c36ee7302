//! A minimal signaling service in front of the relay: receives Meta's `calls` webhooks, drives
//! the relay over gRPC and answers Meta through the Graph API. See `README.md` beside this file.
//!
//! ```text
//! cargo run -p control --example signaling -- \
//!     --listen 0.0.0.0:8080 --relay http://127.0.0.1:7070 \
//!     --graph-token "$WHATSAPP_TOKEN" --app-secret "$APP_SECRET" --verify-token "$VERIFY" \
//!     --internal-sdp-file agent.sdp
//! ```

mod app;

use clap::Parser;
use control::client::RelayClient;
use control::pb;

#[derive(Parser, Debug)]
#[command(about = "WhatsApp calling webhooks → relay gRPC + Graph API (example)")]
struct Args {
    /// Where Meta's webhooks arrive (put TLS in front: Meta only calls https URLs).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// The relay's control endpoint.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    relay: String,
    /// Bearer token of the relay's control API (RELAY_TOKEN still works, deprecated).
    #[arg(long, env = control::TOKEN_ENV, hide_env_values = true)]
    relay_token: Option<String>,
    #[arg(long, default_value = "https://graph.facebook.com/v23.0")]
    graph_base: String,
    #[arg(long, env = "WHATSAPP_TOKEN", hide_env_values = true)]
    graph_token: String,
    /// Verify `X-Hub-Signature-256` on every webhook with this app secret.
    #[arg(long, env = "APP_SECRET", hide_env_values = true)]
    app_secret: Option<String>,
    #[arg(long, env = "VERIFY_TOKEN", hide_env_values = true)]
    verify_token: String,
    /// SDP of the media server every call is bridged to (else it is learned from its packets:
    /// the relay then latches onto the first source).
    #[arg(long)]
    internal_sdp_file: Option<std::path::PathBuf>,
    /// Also place one business-initiated call at start: from this phone number ID ...
    #[arg(long, requires = "call_to")]
    call_from: Option<String>,
    /// ... to this consumer (WhatsApp ID). Needs the consumer's call permission.
    #[arg(long, requires = "call_from")]
    call_to: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let mut args = Args::parse();
    args.relay_token = control::token_or_deprecated(args.relay_token.take(), "RELAY_TOKEN");
    let internal = match &args.internal_sdp_file {
        Some(path) => pb::InternalLeg {
            remote_sdp: std::fs::read_to_string(path)?,
            ..Default::default()
        },
        None => pb::InternalLeg {
            source_policy: pb::SourcePolicy::Latch.into(),
            ..Default::default()
        },
    };
    let relay = RelayClient::connect(args.relay.clone(), args.relay_token.clone()).await?;
    let app = app::Signaling::new(
        app::Config {
            graph_base: args.graph_base,
            graph_token: args.graph_token,
            app_secret: args.app_secret,
            verify_token: args.verify_token,
            internal,
        },
        relay,
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(webhook = %app::describe(listener.local_addr()?), "signaling example up");
    if let (Some(from), Some(to)) = (args.call_from, args.call_to) {
        // Meta's answer arrives as a `connect` webhook, so the listener must be up first.
        let caller = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            match caller.call_consumer(&from, &to).await {
                Ok(id) => tracing::info!(call_id = %id, "business-initiated call placed"),
                Err(e) => tracing::error!(error = %e, "placing the call failed"),
            }
        });
    }
    app.serve(listener).await?;
    Ok(())
}
