//! `relay`: read the configuration, start the engine (one shard per core), then serve the gRPC
//! control plane and the metrics/health listener until SIGTERM, drain, and exit.
//!
//! Exit codes: 0 after a drain, 2 for a configuration error, 1 for anything else that stops
//! the relay from starting or serving.

use std::process::ExitCode;

use relay::config::{self, ConfigError};
use relay::engine::Engine;
use relay::ops;

// The system allocator by default: the packet path allocates nothing, and glibc's malloc
// keeps the relay's memory at about half of mimalloc's per call (BENCHMARKS.md, "Memory per
// call"). `--features mimalloc` restores mimalloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let loaded = match config::load_from_process() {
        Ok(l) => l,
        Err(ConfigError::Usage(e)) => {
            // --help and --version land here too (exit code 0).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => {
            eprintln!("relay: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = loaded.settings;
    if loaded.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    let _log_level = ops::logs::init(settings.log_json);
    if let Some(file) = &loaded.config_file {
        tracing::info!(file = %file.display(), "configuration file read");
    }

    // Before the engine: every shard looks the exporter up when it samples.
    if let Some(collector) = settings.homer {
        let cfg = ops::hep::HepConfig {
            collector,
            capture_id: settings.homer_id,
        };
        if let Err(e) = ops::hep::start(cfg) {
            tracing::error!(error = %e, %collector, "cannot start the HEP exporter");
            return ExitCode::from(1);
        }
        tracing::info!(%collector, capture_id = settings.homer_id, "HEP export to Homer on");
    }
    let engine = match Engine::start(settings.engine_config()) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot start engine");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        shards = engine.shard_count(),
        control = %settings.control_listen,
        capacity = settings.capacity,
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
            tracing::error!(error = %e, "cannot start runtime");
            engine.shutdown();
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let signals = ops::forward_signals().map_err(|e| format!("cannot watch signals: {e}"))?;
        ops::run(engine.clone(), &settings, signals)
            .await
            .map_err(|e| e.to_string())
    });
    engine.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay stopped on an error");
            ExitCode::from(1)
        }
    }
}
