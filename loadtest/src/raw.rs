//! The machine's ceiling: a trivial forwarder with no logic in place of the relay. Per call it
//! binds a WhatsApp-side and an internal-side socket (a port per call and leg, like the relay)
//! and copies every datagram to the other side's peer: `recvmmsg` in, `sendmmsg` out, no
//! parsing, no crypto, no state beyond the two destinations. Same generator, plain RTP on both
//! sides (there is no SRTP to terminate).
//!
//! It runs as one thread inside the load-test process; pin it with `cpu` to compare it with a
//! relay shard pinned to the same core.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use relay::engine::udp::{RecvBatch, SendBatch};

use crate::generator::{current_tid, pin_current_thread, set_buffers};

const WAKER: Token = Token(usize::MAX);

enum RawCmd {
    Add {
        id: u64,
        wa: UdpSocket,
        internal: UdpSocket,
        meta: SocketAddr,
        sip: SocketAddr,
    },
    Remove(u64),
    Stop,
}

pub struct RawForwarder {
    commands: Sender<RawCmd>,
    waker: Arc<Waker>,
    tid: Arc<AtomicI32>,
    join: Option<JoinHandle<()>>,
    bind_ip: std::net::IpAddr,
}

impl std::fmt::Debug for RawForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawForwarder").finish_non_exhaustive()
    }
}

impl RawForwarder {
    pub fn start(bind_ip: std::net::IpAddr, cpu: Option<usize>) -> io::Result<RawForwarder> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let tid = Arc::new(AtomicI32::new(0));
        let join = {
            let tid = tid.clone();
            std::thread::Builder::new()
                .name("raw-forwarder".into())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_current_thread(cpu);
                    }
                    tid.store(current_tid(), Ordering::Relaxed);
                    run(poll, rx);
                })?
        };
        Ok(RawForwarder {
            commands: tx,
            waker,
            tid,
            join: Some(join),
            bind_ip,
        })
    }

    /// Binds a call's two ports; returns (WhatsApp side, internal side) for the peers to send to.
    pub fn add(
        &self,
        id: u64,
        meta: SocketAddr,
        sip: SocketAddr,
    ) -> io::Result<(SocketAddr, SocketAddr)> {
        let bind = || -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let (wa, internal) = (bind()?, bind()?);
        let addrs = (wa.local_addr()?, internal.local_addr()?);
        self.send(RawCmd::Add {
            id,
            wa,
            internal,
            meta,
            sip,
        });
        Ok(addrs)
    }

    pub fn remove(&self, id: u64) {
        self.send(RawCmd::Remove(id));
    }

    fn send(&self, cmd: RawCmd) {
        if self.commands.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// The forwarder thread's kernel ID, once it runs.
    pub fn tid(&self) -> Option<i32> {
        let t = self.tid.load(Ordering::Relaxed);
        (t > 0).then_some(t)
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.send(RawCmd::Stop);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

struct Pair {
    id: u64,
    /// [WhatsApp side, internal side]
    sockets: [mio::net::UdpSocket; 2],
    /// Where what arrives on each side goes: [to SIP peer, to Meta peer].
    dest: [SocketAddr; 2],
}

fn run(mut poll: Poll, commands: Receiver<RawCmd>) {
    let mut events = Events::with_capacity(1024);
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100)))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return;
        }
        for ev in events.iter() {
            let t = ev.token();
            if t == WAKER {
                continue;
            }
            let (i, side) = (t.0 / 2, t.0 % 2);
            let Some(Some(p)) = pairs.get(i) else {
                continue;
            };
            let from_fd = p.sockets[side].as_raw_fd();
            let out_fd = p.sockets[1 - side].as_raw_fd();
            let dest = p.dest[side];
            loop {
                let n = match rx.recv(from_fd) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for k in 0..n {
                    let (buf, len, _) = rx.get(k);
                    tx.push(out_fd, dest, &buf[..len.min(buf.len())]);
                }
                tx.flush();
            }
        }
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                RawCmd::Add {
                    id,
                    wa,
                    internal,
                    meta,
                    sip,
                } => {
                    set_buffers(&wa, 1 << 20);
                    set_buffers(&internal, 1 << 20);
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let mut sockets = [
                        mio::net::UdpSocket::from_std(wa),
                        mio::net::UdpSocket::from_std(internal),
                    ];
                    let mut ok = true;
                    for (side, s) in sockets.iter_mut().enumerate() {
                        ok &= poll
                            .registry()
                            .register(s, Token(2 * i + side), Interest::READABLE)
                            .is_ok();
                    }
                    if !ok {
                        free.push(i);
                        continue;
                    }
                    if let Some(slot) = pairs.get_mut(i) {
                        *slot = Some(Pair {
                            id,
                            sockets,
                            dest: [sip, meta],
                        });
                    }
                }
                RawCmd::Remove(id) => {
                    if let Some(i) = pairs
                        .iter()
                        .position(|p| p.as_ref().is_some_and(|p| p.id == id))
                        && let Some(mut p) = pairs.get_mut(i).and_then(Option::take)
                    {
                        for s in &mut p.sockets {
                            let _ = poll.registry().deregister(s);
                        }
                        free.push(i);
                    }
                }
                RawCmd::Stop => return,
            }
        }
    }
}
