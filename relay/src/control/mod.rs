//! The gRPC server (`relay.v1`) over [`crate::api::CallControl`].
//!
//! One port serves `relay.v1.Relay` (bearer token and/or mTLS), the standard health service
//! (`grpc.health.v1.Health`) and server reflection (both without a token, so probes and grpcurl
//! work; they reveal nothing beyond the public proto and liveness). See `control/proto/relay.proto`
//! for the API and how it maps to Meta's webhooks and Graph API.

mod auth;
mod convert;
mod drain;
mod events;
mod service;
mod status;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control::pb::relay_server::RelayServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::api::CallControl;

pub use auth::TokenCheck;
pub use drain::{DRAIN_REASON, Drain, MAX_DRAIN_DEADLINE};
use events::LogLimits;
pub use status::to_status;

/// The `relay` binary's flag (env `RELAY_ALLOW_UNAUTHENTICATED`) that sets
/// [`ControlConfig::allow_unauthenticated_non_loopback`]. Named in the refusal so an operator
/// knows the way out.
pub const ALLOW_UNAUTHENTICATED_FLAG: &str = "--allow-unauthenticated";

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7070);

#[derive(Clone)]
pub struct ControlConfig {
    /// Where the gRPC server listens. Default 127.0.0.1:7070.
    pub listen: SocketAddr,
    /// Required bearer token (`authorization: Bearer <token>`), if any.
    pub token: Option<String>,
    /// Serve TLS (and mTLS when `client_ca` is set).
    pub tls: Option<TlsFiles>,
    /// Allow a non-loopback `listen` without a token or mTLS. Off by default: the control plane
    /// can end every call and must not be open to a network by accident.
    pub allow_unauthenticated_non_loopback: bool,
}

/// Drain deadline when a Drain request does not give one and the server made its own
/// [`Drain`] (the `relay` binary uses its `drain_deadline`).
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(60);

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: DEFAULT_LISTEN,
            token: None,
            tls: None,
            allow_unauthenticated_non_loopback: false,
        }
    }
}

impl std::fmt::Debug for ControlConfig {
    // Configs get logged; the token must not be.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field(
                "allow_unauthenticated_non_loopback",
                &self.allow_unauthenticated_non_loopback,
            )
            .finish()
    }
}

/// PEM files for the server's TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to. When set, clients without a valid
    /// certificate are refused during the handshake (mTLS), and that counts as authentication.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "refusing to serve the control API on non-loopback address {addr} without \
         authentication: configure a token or mTLS (a TLS client CA), or set {ALLOW_UNAUTHENTICATED_FLAG} \
         (allow_unauthenticated_non_loopback) to force it"
    )]
    UnauthenticatedNonLoopback { addr: SocketAddr },
    #[error("the control token is empty; give a non-empty token or none")]
    EmptyToken,
    #[error("cannot read TLS {what} file {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid reflection descriptor set: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
}

impl ControlConfig {
    /// Whether clients must prove who they are (token or client certificate).
    pub fn authenticated(&self) -> bool {
        self.token.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    /// The checks that do not need a socket: run before binding.
    pub fn validate(&self, addr: SocketAddr) -> Result<(), ControlError> {
        if self.token.as_deref() == Some("") {
            return Err(ControlError::EmptyToken);
        }
        if !addr.ip().is_loopback()
            && !self.authenticated()
            && !self.allow_unauthenticated_non_loopback
        {
            return Err(ControlError::UnauthenticatedNonLoopback { addr });
        }
        Ok(())
    }

    fn server_tls(&self) -> Result<Option<ServerTlsConfig>, ControlError> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ControlError::TlsFile {
                what,
                path: path.clone(),
                source,
            })
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read("certificate", &files.cert)?,
            read("key", &files.key)?,
        ));
        if let Some(ca) = &files.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
        }
        Ok(Some(tls))
    }
}

/// Bind `cfg.listen` and serve until `shutdown` completes. Refuses an unauthenticated
/// non-loopback address (see [`ControlConfig::allow_unauthenticated_non_loopback`]).
pub async fn serve<C: CallControl>(
    engine: Arc<C>,
    cfg: ControlConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    serve_with_drain(engine, cfg, None, shutdown).await
}

/// [`serve`] with the process's [`Drain`] (the `relay` binary shares it with SIGTERM); `None`
/// makes one for this server.
pub async fn serve_with_drain<C: CallControl>(
    engine: Arc<C>,
    cfg: ControlConfig,
    drain: Option<Arc<Drain>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    cfg.validate(cfg.listen)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ControlError::Bind {
            addr: cfg.listen,
            source,
        })?;
    serve_on_with_drain(engine, cfg, listener, drain, shutdown).await
}

/// Serve on an already bound listener (tests bind port 0 and read the address first).
/// `cfg.listen` is ignored; the listener's own address is checked instead.
pub async fn serve_on<C: CallControl>(
    engine: Arc<C>,
    cfg: ControlConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    serve_on_with_drain(engine, cfg, listener, None, shutdown).await
}

/// [`serve_on`] with the process's [`Drain`]; `None` makes one for this server.
pub async fn serve_on_with_drain<C: CallControl>(
    engine: Arc<C>,
    cfg: ControlConfig,
    listener: TcpListener,
    drain: Option<Arc<Drain>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let addr = listener.local_addr().map_err(|source| ControlError::Bind {
        addr: cfg.listen,
        source,
    })?;
    cfg.validate(addr)?;
    let tls = cfg.server_tls()?;

    // Everything long-lived (watch streams, the event log, the drain timer) stops when this
    // flips; tonic's graceful shutdown waits for open streams, so they must end by themselves.
    let (stop_tx, stop_rx) = watch::channel(false);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(control::SERVICE_NAME, ServingStatus::Serving)
        .await;
    // Both reflection versions: grpcurl before 1.8.8 and Python's grpcio-reflection speak only
    // v1alpha, and say "server does not support the reflection API" without it.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(control::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| ControlError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ControlError::Reflection(e.to_string()))?;

    let log = Arc::new(events::EventLog::new(LogLimits::default()));
    // Subscribe before accepting requests so the log sees every call from its creation.
    tokio::spawn(events::run_log(
        Arc::clone(&engine),
        Arc::clone(&log),
        engine.subscribe(),
        stop_rx.clone(),
    ));
    let drain = drain.unwrap_or_else(|| {
        Drain::spawn(Arc::clone(&engine), DEFAULT_DRAIN_DEADLINE, stop_rx.clone())
    });
    // However the drain started (Drain request, SIGTERM), readiness for gRPC health checkers
    // turns off with it.
    {
        let (drain, health, mut stop) = (Arc::clone(&drain), health.clone(), stop_rx.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = drain.started() => {
                    health
                        .set_service_status(control::SERVICE_NAME, ServingStatus::NotServing)
                        .await;
                }
                _ = crate::ops::stopped(&mut stop) => {}
            }
        });
    }

    let relay = service::RelayService {
        engine,
        log,
        drain,
        health,
        stop: stop_rx,
    };
    let relay = RelayServer::with_interceptor(relay, TokenCheck::new(cfg.token.as_deref()));

    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).map_err(ControlError::Tls)?;
    }
    tracing::info!(
        %addr,
        token = cfg.token.is_some(),
        tls = cfg.tls.is_some(),
        mtls = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "control API listening"
    );
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(relay)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
        .map_err(ControlError::Serve)
}
