//! `relay`: start the engine (one shard per core) and the gRPC control plane.

use std::sync::Arc;

use clap::Parser;
use relay::config::Args;
use relay::control::{ControlConfig, serve};
use relay::engine::Engine;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log_json);
    let engine_cfg = match args.engine_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let engine = match Engine::start(engine_cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("relay: cannot start engine: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(
        shards = engine.shard_count(),
        control = %args.control_listen,
        fingerprint = %engine.identity().fingerprint().to_sdp_value(),
        "relay started"
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let control_cfg = ControlConfig {
        listen: args.control_listen,
        token: args.control_token.clone(),
        tls: None,
        allow_unauthenticated_non_loopback: args.allow_unauthenticated,
        ..ControlConfig::default()
    };
    let handle = engine.clone();
    let result = rt.block_on(async move {
        let shutdown = async {
            shutdown_signal().await;
            tracing::info!("shutdown requested: ending calls");
        };
        serve(Arc::new(handle), control_cfg, shutdown).await
    });
    engine.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: control plane: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}
