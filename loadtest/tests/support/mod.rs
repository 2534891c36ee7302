//! A relay for loadtest's own tests: the real engine (one shard) and its gRPC control plane in
//! this process, on a loopback port.

use std::net::SocketAddr;
use std::sync::Arc;

use relay::control::{ControlConfig, serve_on};
use relay::engine::{Engine, EngineConfig, EngineHandle};

pub struct InProcessRelay {
    pub engine: EngineHandle,
    /// The control plane's address (`http://{addr}`).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

pub async fn start_relay() -> InProcessRelay {
    let engine = Engine::start(EngineConfig {
        shards: 1,
        ..EngineConfig::default()
    })
    .expect("engine starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind control port");
    let addr = listener.local_addr().expect("control address");
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let engine = engine.clone();
        async move {
            let _ = serve_on(
                Arc::new(engine),
                ControlConfig::default(),
                listener,
                async {
                    let _ = stop_rx.await;
                },
            )
            .await;
        }
    });
    InProcessRelay {
        engine,
        addr,
        stop,
        server,
    }
}

impl InProcessRelay {
    /// Stop the control plane, then the engine.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.engine.shutdown();
    }
}
