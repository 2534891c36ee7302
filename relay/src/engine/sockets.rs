//! Binding a call's sockets: one per WhatsApp address family and one for the internal leg,
//! each on its own port (see [`crate::net::SocketRef`] for why ports are per call).
//!
//! Every call socket is bound with `SO_REUSEPORT`, so that once a leg's peer is fixed the
//! driver can open a *connected twin* on the same address and port ([`open_twin`], see
//! `ShardIo::connect_twin`): the kernel delivers the peer's datagrams to the connected twin
//! and everything else to the unconnected primary, and sends to the peer skip the route
//! lookup. The trade-off: with `SO_REUSEPORT` another process **of the same user, in the same
//! network namespace** can bind a port the relay holds and take a share of its unconnected
//! traffic (the kernel refuses other users). Run the relay under a user no other workload there
//! uses (deploy/README.md says how with the chart), or turn twins off (`connect_twins = false`),
//! which also drops the option.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

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

    fn bind(&self, ip: IpAddr, reuse_port: bool) -> io::Result<UdpSocket> {
        let Some(r) = self.range else {
            return bind_udp(SocketAddr::new(ip, 0), reuse_port);
        };
        let span = (r.max as u32).saturating_sub(r.min as u32) + 1;
        for _ in 0..span {
            let off = self.cursor.fetch_add(1, Ordering::Relaxed) % span;
            let port = r.min as u32 + off;
            if let Ok(s) = bind_udp(SocketAddr::new(ip, port as u16), reuse_port) {
                return Ok(s);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no free port in {}-{} on {ip}", r.min, r.max),
        ))
    }
}

/// A non-blocking UDP socket bound to `addr` that a connected twin can later share
/// ([`open_twin`]) when `reuse_port`.
///
/// `SO_REUSEPORT` is set right *after* the bind, not before: an automatic port (`:0`) chosen
/// for a socket that already has the option may be one our own process holds with it (the
/// kernel treats such ports as shareable: 184 collisions in 3,000 binds on 6.18, 2026-12-05),
/// which would put two calls on one port. Bound first, the socket gets a port nobody holds,
/// and a bind without the option into a port we hold still fails. The twin's bind only needs
/// the flag on both sockets when it happens (the kernel checks it then); Linux then picks the
/// connected twin for its peer's datagrams by score.
pub(crate) fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    if reuse_port {
        socket2::SockRef::from(&s).set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A connected twin of the socket bound to `local` (which has `SO_REUSEPORT`): a new socket
/// with `SO_REUSEPORT` (set before its bind, so the bind may share the port), bound to the
/// same address and port and `connect`ed to `peer`. The kernel delivers `peer`'s datagrams to
/// it rather than to the unconnected primary. Opened on the shard thread when a leg's peer
/// becomes fixed (not per packet).
pub(crate) fn open_twin(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    // Left dual-stack on IPv6 like the primary (std's bind does not set IPV6_V6ONLY).
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    s.connect(&peer.into())?;
    Ok(s.into())
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
    ports.bind(cfg.internal_bind, cfg.connect_twins)
}

pub(crate) fn bind_call(cfg: &EngineConfig, ports: &PortAllocator) -> io::Result<BoundCall> {
    let reuse = cfg.connect_twins;
    let v4 = cfg
        .whatsapp_bind_v4
        .map(|ip| ports.bind(ip, reuse))
        .transpose()?;
    // IPv6 is optional: a host without it still serves IPv4 candidates.
    let v6 = cfg
        .whatsapp_bind_v6
        .and_then(|ip| ports.bind(ip, reuse).ok());
    if v4.is_none() && v6.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no WhatsApp-facing address configured",
        ));
    }
    let internal = ports.bind(cfg.internal_bind, reuse)?;
    Ok(BoundCall {
        addrs: LocalSockets {
            wa_v4: v4.as_ref().and_then(|s| s.local_addr().ok()),
            wa_v6: v6.as_ref().and_then(|s| s.local_addr().ok()),
            internal: internal.local_addr()?,
        },
        sockets: vec![v4, v6, Some(internal)],
    })
}
