//! The epoll driver: mio readiness (edge-triggered) + `recvmmsg` per ready socket +
//! `sendmmsg` per run of datagrams on one socket (see [`super::udp`]). The fallback where
//! io_uring is missing or refused; about two system calls per forwarded packet with a socket
//! per call and leg, since each socket rarely holds more than one datagram.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::engine::core::{IoCounters, ShardCore, ShardIo, SlotKey, SockKey, TWIN_BIT};
use crate::engine::driver::{Driver, Waker};
use crate::engine::sockets::open_twin;
use crate::engine::udp::{BATCH, RecvBatch, SendBatch, has_queued};
use crate::engine::{IO_SYSCALLS, IoSyscall};

/// The waker's token: the top bits, which no [`SockKey::encode`] sets.
const WAKER: Token = Token(usize::MAX);

struct CallIo {
    generation: u32,
    sockets: Vec<Option<mio::net::UdpSocket>>,
    fds: Vec<RawFd>,
    /// Connected twins by socket index (see [`ShardIo::connect_twin`]); grown on demand.
    twins: Vec<Option<Twin>>,
}

/// A socket's connected twin: registered with the key's [`TWIN_BIT`] token, so its datagrams
/// reach the core under the primary's key.
struct Twin {
    sock: mio::net::UdpSocket,
    fd: RawFd,
    peer: SocketAddr,
}

/// The send side: the call sockets' table and the send batch.
pub(crate) struct EpollIo {
    registry: Registry,
    calls: Vec<Option<CallIo>>,
    send: SendBatch,
    send_dropped: u64,
    twins: u64,
    twin_failures: u64,
    twin_sends: u64,
    twin_recvs: u64,
}

impl EpollIo {
    fn fd(&self, key: SockKey) -> Option<RawFd> {
        self.call(key.call)?
            .fds
            .get(usize::from(key.socket))
            .copied()
            .filter(|fd| *fd >= 0)
    }

    fn twin(&self, key: SockKey) -> Option<&Twin> {
        self.call(key.call)?
            .twins
            .get(usize::from(key.socket))?
            .as_ref()
    }

    /// The call's I/O if `key` still names it (not a reused slot).
    fn call(&self, key: SlotKey) -> Option<&CallIo> {
        self.calls
            .get(key.slot as usize)?
            .as_ref()
            .filter(|c| c.generation == key.generation)
    }

    /// Deregister and close a twin. What is queued for it leaves first; datagrams from its
    /// peer still unread on it are lost (the peer's later ones reach the primary or the next
    /// twin).
    fn close_twin(&mut self, mut t: Twin) {
        self.send.flush();
        let _ = self.registry.deregister(&mut t.sock);
        self.twins = self.twins.saturating_sub(1);
    }
}

impl ShardIo for EpollIo {
    fn send(&mut self, via: SockKey, to: SocketAddr, data: &[u8]) {
        if let Some(t) = self.twin(via)
            && t.peer == to
        {
            let fd = t.fd;
            self.twin_sends += 1;
            return self.send.push_connected(fd, data);
        }
        match self.fd(via) {
            Some(fd) => self.send.push(fd, to, data),
            None => self.send_dropped += 1,
        }
    }

    fn connect_twin(&mut self, key: SockKey, peer: Option<SocketAddr>) {
        let Some(c) = live_call(&mut self.calls, key.call) else {
            return;
        };
        let i = usize::from(key.socket);
        let Some(local) = c
            .sockets
            .get(i)
            .and_then(Option::as_ref)
            .and_then(|s| s.local_addr().ok())
        else {
            return;
        };
        if c.twins.get(i).and_then(Option::as_ref).map(|t| t.peer) == peer {
            return;
        }
        if c.twins.len() <= i {
            c.twins.resize_with(i + 1, || None);
        }
        let old = c.twins[i].take();
        if let Some(t) = old {
            self.close_twin(t);
        }
        let Some(peer) = peer else { return };
        let opened = open_twin(local, peer).and_then(|s| {
            let fd = s.as_raw_fd();
            let mut sock = mio::net::UdpSocket::from_std(s);
            self.registry.register(
                &mut sock,
                Token((key.encode_twin()) as usize),
                Interest::READABLE,
            )?;
            Ok(Twin { sock, fd, peer })
        });
        match opened {
            Ok(t) => {
                if let Some(c) = live_call(&mut self.calls, key.call) {
                    c.twins[i] = Some(t);
                    self.twins += 1;
                }
            }
            Err(e) => {
                self.twin_failures += 1;
                tracing::debug!(error = %e, %peer, "connected twin not opened; sends stay on the socket");
            }
        }
    }

    fn queued(&mut self, key: SockKey) -> bool {
        // The peer's datagrams wait on the connected twin, if the socket has one.
        self.fd(key).is_some_and(has_queued) || self.twin(key).is_some_and(|t| has_queued(t.fd))
    }

    fn attach(&mut self, call: SlotKey, sockets: Vec<Option<UdpSocket>>) {
        let idx = call.slot as usize;
        if self.calls.len() <= idx {
            self.calls.resize_with(idx + 1, || None);
        }
        let mut fds = Vec::with_capacity(sockets.len());
        let mut mio_sockets = Vec::with_capacity(sockets.len());
        for (i, s) in sockets.into_iter().enumerate() {
            let Some(s) = s else {
                fds.push(-1);
                mio_sockets.push(None);
                continue;
            };
            fds.push(s.as_raw_fd());
            let mut ms = mio::net::UdpSocket::from_std(s);
            let token = SockKey {
                call,
                socket: i as u16,
            }
            .encode();
            if let Err(e) =
                self.registry
                    .register(&mut ms, Token(token as usize), Interest::READABLE)
            {
                tracing::error!(error = %e, "socket registration failed");
            }
            mio_sockets.push(Some(ms));
        }
        self.calls[idx] = Some(CallIo {
            generation: call.generation,
            sockets: mio_sockets,
            fds,
            twins: Vec::new(),
        });
    }

    fn detach(&mut self, call: SlotKey) {
        let Some(slot) = self.calls.get_mut(call.slot as usize) else {
            return;
        };
        if slot
            .as_ref()
            .is_none_or(|c| c.generation != call.generation)
        {
            return;
        }
        // The call's last datagrams (BYEs) leave before its sockets close.
        self.send.flush();
        if let Some(mut c) = slot.take() {
            for s in c.sockets.iter_mut().flatten() {
                let _ = self.registry.deregister(s);
            }
            for t in c.twins.iter_mut().flatten() {
                let _ = self.registry.deregister(&mut t.sock);
                self.twins = self.twins.saturating_sub(1);
            }
        }
    }

    fn attach_socket(&mut self, key: SockKey, socket: UdpSocket) -> io::Result<()> {
        let Some(c) = live_call(&mut self.calls, key.call) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such call"));
        };
        let i = usize::from(key.socket);
        let fd = socket.as_raw_fd();
        let mut ms = mio::net::UdpSocket::from_std(socket);
        self.registry
            .register(&mut ms, Token(key.encode() as usize), Interest::READABLE)?;
        if c.sockets.len() <= i {
            c.sockets.resize_with(i + 1, || None);
            c.fds.resize(i + 1, -1);
        }
        c.sockets[i] = Some(ms);
        c.fds[i] = fd;
        Ok(())
    }

    fn detach_socket(&mut self, key: SockKey) {
        let Some(c) = live_call(&mut self.calls, key.call) else {
            return;
        };
        let i = usize::from(key.socket);
        let Some(mut s) = c.sockets.get_mut(i).and_then(Option::take) else {
            return;
        };
        c.fds[i] = -1;
        let twin = c.twins.get_mut(i).and_then(Option::take);
        // What is queued on it leaves before it closes.
        self.send.flush();
        let _ = self.registry.deregister(&mut s);
        if let Some(t) = twin {
            self.close_twin(t);
        }
    }
}

pub(crate) struct EpollDriver {
    poll: Poll,
    events: Events,
    waker: Waker,
    recv: RecvBatch,
    io: EpollIo,
    epoll_waits: u64,
    waker_reads: u64,
    recv_errors: u64,
}

impl EpollDriver {
    pub(crate) fn new(waker: Waker) -> io::Result<EpollDriver> {
        waker.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&waker.raw_fd()), WAKER, Interest::READABLE)?;
        let registry = poll.registry().try_clone()?;
        Ok(EpollDriver {
            poll,
            events: Events::with_capacity(1024),
            waker,
            recv: RecvBatch::new(),
            io: EpollIo {
                registry,
                calls: Vec::new(),
                send: SendBatch::new(),
                send_dropped: 0,
                twins: 0,
                twin_failures: 0,
                twin_sends: 0,
                twin_recvs: 0,
            },
            epoll_waits: 0,
            waker_reads: 0,
            recv_errors: 0,
        })
    }

    /// Sends that went out on connected twins, and datagrams received on them, so far.
    #[cfg(test)]
    pub(crate) fn twin_traffic(&self) -> (u64, u64) {
        (self.io.twin_sends, self.io.twin_recvs)
    }

    /// Receive everything queued on one socket (its connected twin when `twin`) and hand
    /// each datagram to the core under `key`.
    fn drain_socket(&mut self, key: SockKey, twin: bool, now: Instant, core: &mut ShardCore) {
        loop {
            // Looked up each batch: the call may have ended (and its socket closed) during the
            // last one, or the twin been closed.
            let fd = if twin {
                self.io.twin(key).map(|t| t.fd)
            } else {
                self.io.fd(key)
            };
            let Some(fd) = fd else { return };
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(_) => {
                    self.recv_errors += 1;
                    0
                }
            };
            if twin {
                self.io.twin_recvs += n as u64;
            }
            for i in 0..n {
                let (buf, len, from) = self.recv.get(i);
                core.on_datagram(now, key, from, &mut buf[..], len, &mut self.io);
            }
            // Edge-triggered readiness: a short batch means the socket was empty; any later
            // datagram raises a new event.
            if n < BATCH {
                return;
            }
        }
    }
}

impl Driver for EpollDriver {
    type Io = EpollIo;

    fn name(&self) -> &'static str {
        "epoll"
    }

    fn wait(&mut self, deadline: Instant) -> io::Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.epoll_waits += 1;
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
            _ => Ok(()),
        }
    }

    fn deliver(&mut self, now: Instant, core: &mut ShardCore) {
        // Take the events out so `drain_socket` may borrow self mutably; put them back (the
        // same allocation) after.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            if ev.token() == WAKER {
                self.waker_reads += 1;
                self.waker.drain();
                continue;
            }
            let token = ev.token().0 as u64;
            self.drain_socket(SockKey::decode(token), token & TWIN_BIT != 0, now, core);
        }
        self.events = events;
    }

    fn io(&mut self) -> &mut EpollIo {
        &mut self.io
    }

    fn flush(&mut self) {
        self.io.send.flush();
    }

    fn finish(&mut self) {
        self.io.send.flush();
    }

    fn counters(&self) -> IoCounters {
        let mut syscalls = [0; IO_SYSCALLS.len()];
        syscalls[IoSyscall::EpollWait as usize] = self.epoll_waits;
        syscalls[IoSyscall::Recvmmsg as usize] = self.recv.syscalls;
        syscalls[IoSyscall::Sendmmsg as usize] = self.io.send.syscalls;
        syscalls[IoSyscall::EventfdRead as usize] = self.waker_reads;
        IoCounters {
            sent: self.io.send.sent,
            send_errors: self.io.send.send_errors + self.io.send_dropped,
            recv_errors: self.recv_errors,
            twins: self.io.twins,
            twin_failures: self.io.twin_failures,
            syscalls,
            ..Default::default()
        }
    }
}

/// The call's I/O if `key` still names it (not a reused slot). A free function, so the
/// caller can keep using the driver's other fields while it holds the call.
fn live_call(calls: &mut [Option<CallIo>], key: SlotKey) -> Option<&mut CallIo> {
    calls
        .get_mut(key.slot as usize)?
        .as_mut()
        .filter(|c| c.generation == key.generation)
}
