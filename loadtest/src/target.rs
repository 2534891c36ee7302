//! The relay under test: a child process this tool starts (and stops), or one already running.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::client::RelayClient;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot find a free control port: {0}")]
    Port(std::io::Error),
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("relay exited during startup ({status}); see its log {log}")]
    Exited { status: String, log: PathBuf },
    #[error("relay control API at {endpoint} not reachable within {waited:?}: {last}")]
    Unreachable {
        endpoint: String,
        waited: Duration,
        last: String,
    },
    #[error("cannot create the relay log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct SpawnOptions {
    pub bin: PathBuf,
    /// `--shards` for the relay (engine threads).
    pub shards: usize,
    /// Pin the relay to this CPU (with `taskset` when installed, else sched_setaffinity).
    pub cpu: Option<usize>,
    /// More flags passed through verbatim.
    pub extra_args: Vec<String>,
    /// Where the relay's stdout/stderr go.
    pub log: PathBuf,
}

/// A relay started by this tool. Dropping it stops it (SIGTERM, then SIGKILL); it also dies
/// with this process (PR_SET_PDEATHSIG).
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    pub control: SocketAddr,
    pub log: PathBuf,
}

pub(crate) fn free_port() -> std::io::Result<SocketAddr> {
    // Bind port 0, read it, release it: a tiny race with other programs, acceptable here.
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    l.local_addr()
}

pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl RelayProcess {
    pub fn spawn(opts: &SpawnOptions) -> Result<RelayProcess, TargetError> {
        let control = free_port().map_err(TargetError::Port)?;
        let log = std::fs::File::create(&opts.log).map_err(|source| TargetError::Log {
            path: opts.log.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| TargetError::Log {
            path: opts.log.clone(),
            source,
        })?;
        let taskset = opts
            .cpu
            .and_then(|cpu| on_path("taskset").map(|t| (t, cpu)));
        let mut cmd = match &taskset {
            Some((t, cpu)) => {
                let mut c = Command::new(t);
                c.arg("-c").arg(cpu.to_string()).arg(&opts.bin);
                c
            }
            None => Command::new(&opts.bin),
        };
        cmd.arg("--control-listen")
            .arg(control.to_string())
            .arg("--shards")
            .arg(opts.shards.to_string())
            .arg("--capacity")
            .arg("1000000")
            .args(&opts.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RELAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let pin = if taskset.is_none() { opts.cpu } else { None };
        crate::os::die_with_parent_on_cpu(&mut cmd, pin);
        let child = cmd.spawn().map_err(|source| TargetError::Spawn {
            bin: opts.bin.clone(),
            source,
        })?;
        Ok(RelayProcess {
            child,
            control,
            log: opts.log.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.control)
    }

    /// `Err` if the relay has already exited.
    pub fn check_alive(&mut self) -> Result<(), TargetError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(TargetError::Exited {
                status: status.to_string(),
                log: self.log.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a target we started: SIGTERM (the relay drains; rtpengine tears its calls down), up to
/// 3 s to exit, then SIGKILL. Reaps it either way.
pub(crate) fn stop_child(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    crate::os::signal(child, libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Connects to the control API, retrying until it answers or `wait` passes (a relay just
/// started needs a moment). `relay`, if given, is checked for an early exit.
pub async fn connect(
    endpoint: &str,
    token: Option<String>,
    wait: Duration,
    mut relay: Option<&mut RelayProcess>,
) -> Result<RelayClient, TargetError> {
    let start = Instant::now();
    loop {
        if let Some(r) = relay.as_deref_mut() {
            r.check_alive()?;
        }
        let last = match RelayClient::connect(endpoint.to_string(), token.clone()).await {
            Ok(mut c) => match c.load().await {
                Ok(_) => return Ok(c),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= wait {
            return Err(TargetError::Unreachable {
                endpoint: endpoint.to_string(),
                waited: wait,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The default relay binary next to this one (`target/release/relay` when run from there).
pub fn default_relay_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("relay");
    p.is_file().then_some(p)
}
