//! The vocabulary shared by every sans-IO state machine and the engine: which of a call's
//! sockets a datagram uses, and where state machines put the datagrams they want sent.

use std::net::SocketAddr;

/// One of the UDP sockets a call owns on its shard: an index into the call's socket list.
///
/// Opaque to everything but the call: ICE, DTLS and the `Outbox` carry it to say "the socket
/// this came in on / should go out on", and the engine uses [`SocketId::index`] to find the
/// descriptor in the call's list. Which socket serves which leg is the call's business
/// (every call starts with [`SocketId::WaV4`], [`SocketId::WaV6`], [`SocketId::Internal`];
/// a call may gain more while live, from [`SocketId::FIRST_EXTRA`] on: a supervisor's leg
/// with its own port).
///
/// Every call has its own local ports: Meta's media servers answer from a handful of ports
/// (3478/3480/3482/3484/40012), so many calls share one remote address and a shared local port
/// could not tell their DTLS records apart. A 5-tuple per call makes demux a socket lookup.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SocketId(u8);

/// The name the engine knows it by.
pub type SocketRef = SocketId;

// The layout's names read like the enum they replace, so the engine's code is unchanged.
#[allow(non_upper_case_globals)]
impl SocketId {
    /// The call's WhatsApp-facing IPv4 socket.
    pub const WaV4: SocketId = SocketId(0);
    /// The call's WhatsApp-facing IPv6 socket (bound when IPv6 is enabled).
    pub const WaV6: SocketId = SocketId(1);
    /// The call's internal-leg socket (SIP media server, IVR, browser agent).
    pub const Internal: SocketId = SocketId(2);
    /// The sockets every call is created with, by index.
    pub const ALL: [SocketId; 3] = [SocketId::WaV4, SocketId::WaV6, SocketId::Internal];
    /// The first index a socket added to a live call gets (see `ShardCore::with_new_socket`).
    pub const FIRST_EXTRA: SocketId = SocketId(3);
    /// The most sockets a call can have over its life (indices are not reused).
    pub const MAX: usize = u8::MAX as usize + 1;

    /// The socket at `index` in the call's list.
    pub const fn new(index: u8) -> SocketId {
        SocketId(index)
    }

    /// Its place in the call's socket list.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Does the call's layout put this socket on its WhatsApp leg? (The engine's per-leg
    /// count of datagrams it drops before any call sees them.)
    pub fn is_whatsapp(self) -> bool {
        self == SocketId::WaV4 || self == SocketId::WaV6
    }
}

/// Where state machines put datagrams to send. The engine implements it with a batch that it
/// flushes with sendmmsg/sendto; tests implement it with a `Vec`. `push` copies `data`, so
/// callers may reuse their scratch buffer immediately, with one exception: bytes inside the
/// receive buffer the engine handed to `Call::handle_datagram` may be sent straight from that
/// buffer (the io_uring driver does: no copy), so a region of it must not be written after it
/// was pushed. Implementations must not allocate in steady state (the engine's batch is
/// preallocated).
pub trait Outbox {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]);

    /// Are datagrams waiting unread on socket `via` (received by the kernel, not yet handed to
    /// the call)? Silence fill asks before standing in for a packet that may be among them.
    /// Default: no (tests, tools).
    fn queued(&mut self, via: SocketRef) -> bool {
        let _ = via;
        false
    }
}

/// A borrowed outbox is one (so `&mut dyn Outbox` can go where `&mut impl Outbox` is taken).
impl<O: Outbox + ?Sized> Outbox for &mut O {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]) {
        (**self).push(via, to, data)
    }

    fn queued(&mut self, via: SocketRef) -> bool {
        (**self).queued(via)
    }
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
