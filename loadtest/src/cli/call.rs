//! `loadtest call`: one call through a running relay, explained (see [`crate::call`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::target::{TargetKind, check_mode};
use super::{CliError, Common, parse_duration};
use crate::session::WaMode;

#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// The relay's control address (its default is 127.0.0.1:7070); --relay-addr works too.
    #[arg(long)]
    pub relay: Option<String>,
    /// How long the call holds audio.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// `loadtest call`: no target to start, no pinning, one call and its story.
pub(super) fn call(o: &Common, a: &CallArgs) -> Result<ExitCode, CliError> {
    let endpoint = crate::call::endpoint(
        a.relay
            .as_deref()
            .or(o.relay_addr.as_deref())
            .unwrap_or("127.0.0.1:7070"),
    );
    let wa = o.wa_security.unwrap_or(WaMode::Dtls);
    check_mode(TargetKind::Relay, wa)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let outcome = rt.block_on(crate::call::one_call(
        &endpoint,
        o.token.clone(),
        wa,
        a.duration,
    ))?;
    print!("{}", outcome.render());
    Ok(if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
