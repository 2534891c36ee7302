//! The vocabulary shared by every sans-IO state machine and the engine: which of a call's
//! sockets a datagram uses, and where state machines put the datagrams they want sent.

use std::net::SocketAddr;

/// One of the (up to three) UDP sockets a call owns on its shard.
///
/// Every call has its own local ports: Meta's media servers answer from a handful of ports
/// (3478/3480/3482/3484/40012), so many calls share one remote address and a shared local port
/// could not tell their DTLS records apart. A 5-tuple per call makes demux a socket lookup.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SocketRef {
    /// WhatsApp leg, IPv4.
    WaV4,
    /// WhatsApp leg, IPv6 (present when IPv6 is enabled and bound).
    WaV6,
    /// The internal leg (SIP media server, IVR, browser agent).
    Internal,
}

impl SocketRef {
    pub const ALL: [SocketRef; 3] = [SocketRef::WaV4, SocketRef::WaV6, SocketRef::Internal];

    pub fn index(self) -> usize {
        match self {
            SocketRef::WaV4 => 0,
            SocketRef::WaV6 => 1,
            SocketRef::Internal => 2,
        }
    }

    pub fn is_whatsapp(self) -> bool {
        !matches!(self, SocketRef::Internal)
    }
}

/// Where state machines put datagrams to send. The engine implements it with a batch that it
/// flushes with sendmmsg/sendto; tests implement it with a `Vec`. `push` copies `data`, so
/// callers may reuse their scratch buffer immediately. Implementations must not allocate in
/// steady state (the engine's batch is preallocated).
pub trait Outbox {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]);
}

/// A datagram captured by [`VecOutbox`] (tests, emulators, benches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub via: SocketRef,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// An [`Outbox`] that records every datagram. For tests and tools, not the packet path.
#[derive(Default, Debug)]
pub struct VecOutbox {
    pub sent: Vec<Sent>,
}

impl Outbox for VecOutbox {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]) {
        self.sent.push(Sent {
            via,
            to,
            data: data.to_vec(),
        });
    }
}

impl VecOutbox {
    pub fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }
}
