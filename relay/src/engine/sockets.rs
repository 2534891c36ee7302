//! Binding a call's sockets: one per WhatsApp address family and one for the internal leg,
//! each on its own port (see [`crate::net::SocketRef`] for why ports are per call).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::call::LocalSockets;
use crate::engine::EngineConfig;

/// An inclusive port range for media sockets (what a firewall or NodePort range allows).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

/// Hands out ports round-robin from the range; a port in use is skipped (bind fails).
pub(crate) struct PortAllocator {
    range: Option<PortRange>,
    cursor: AtomicU32,
}

impl PortAllocator {
    pub(crate) fn new(range: Option<PortRange>) -> Self {
        PortAllocator {
            range,
            cursor: AtomicU32::new(0),
        }
    }

    fn bind(&self, ip: IpAddr) -> io::Result<UdpSocket> {
        let Some(r) = self.range else {
            return configure(UdpSocket::bind(SocketAddr::new(ip, 0))?);
        };
        let span = (r.max as u32).saturating_sub(r.min as u32) + 1;
        for _ in 0..span {
            let off = self.cursor.fetch_add(1, Ordering::Relaxed) % span;
            let port = r.min as u32 + off;
            if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port as u16)) {
                return configure(s);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no free port in {}-{} on {ip}", r.min, r.max),
        ))
    }
}

fn configure(s: UdpSocket) -> io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    Ok(s)
}

/// What a new call starts with: its sockets as a list by [`crate::net::SocketRef::index`]
/// (`None` where a family is not bound), and their addresses for the SDP. The engine
/// registers every entry with the shard's driver; a call can gain more while live (see
/// [`bind_extra`] and `ShardCore::with_new_socket`).
pub(crate) struct BoundCall {
    pub addrs: LocalSockets,
    pub sockets: Vec<Option<UdpSocket>>,
}

/// One more socket for a live call (a supervisor's leg): on the internal address, from the
/// same port pool. Bound on the control thread, like a new call's.
pub(crate) fn bind_extra(cfg: &EngineConfig, ports: &PortAllocator) -> io::Result<UdpSocket> {
    ports.bind(cfg.internal_bind)
}

pub(crate) fn bind_call(cfg: &EngineConfig, ports: &PortAllocator) -> io::Result<BoundCall> {
    let v4 = cfg.whatsapp_bind_v4.map(|ip| ports.bind(ip)).transpose()?;
    // IPv6 is optional: a host without it still serves IPv4 candidates.
    let v6 = cfg.whatsapp_bind_v6.and_then(|ip| ports.bind(ip).ok());
    if v4.is_none() && v6.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no WhatsApp-facing address configured",
        ));
    }
    let internal = ports.bind(cfg.internal_bind)?;
    Ok(BoundCall {
        addrs: LocalSockets {
            wa_v4: v4.as_ref().and_then(|s| s.local_addr().ok()),
            wa_v6: v6.as_ref().and_then(|s| s.local_addr().ok()),
            internal: internal.local_addr()?,
        },
        sockets: vec![v4, v6, Some(internal)],
    })
}
