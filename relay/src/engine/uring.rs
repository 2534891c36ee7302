//! The io_uring driver: one multishot `recvmsg` per call socket, all drawing from one provided
//! buffer ring, and sends queued as SQEs that go to the kernel with the next wait. A loop turn
//! is one `io_uring_enter`, whatever the number of sockets and datagrams: it submits the
//! turn's sends and harvests every datagram that arrived on any socket meanwhile.
//!
//! Why the `io-uring` crate: it is the thin binding (raw SQEs and CQEs, setup flags, buffer
//! rings) with no runtime of its own; tokio-uring and glommio bring an executor and own the
//! buffers, which a run-to-completion shard loop does not want.
//!
//! The ring is set up with `IORING_SETUP_SINGLE_ISSUER` + `DEFER_TASKRUN` (the shard thread is
//! the only submitter, and the kernel runs completion work only when we ask for events). The
//! issue's prototype measured io_uring without them WORSE than epoll: completion work then
//! interrupts the thread at every packet. Registered files and buffers are not used: the send
//! path copies into a slab the ring reads from, and file lookups were not visible in profiles.
//!
//! user_data: a receive carries its [`SockKey`] (slot, socket index, generation), so a
//! completion for a removed call is recognised even after its slot was reused. The top two bits
//! tag the driver's own operations (sends, the waker read, cancels).
//!
//! No allocation per packet: the receive buffers, the send slab and the completion scratch
//! are allocated when the shard starts.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::engine::core::{IoCounters, ShardCore, ShardIo, SlotKey, SockKey};
use crate::engine::driver::{Driver, Waker};
use crate::engine::udp::{BUF_SIZE, sockaddr_to_std, std_to_sockaddr};
use crate::engine::{IO_SYSCALLS, IoSyscall};

/// Tags in user_data's top two bits (a receive's [`SockKey::encode`] leaves them at zero).
const TAG_SHIFT: u32 = 62;
const TAG_RECV: u64 = 0;
const TAG_SEND: u64 = 1;
const TAG_WAKER: u64 = 2;
const TAG_CANCEL: u64 = 3;
const PAYLOAD_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// Submission queue entries (sends of one turn beyond this submit early).
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries: a turn's receives and send completions.
const CQ_ENTRIES: u32 = 8192;
/// Receive buffers in the provided ring (a power of two). When they run out, multishot
/// receives stop with ENOBUFS and are re-armed; the datagrams wait in their sockets.
const RECV_BUFFERS: u16 = 2048;
/// Sends in flight at once (copies the kernel reads until it completes them).
const SEND_SLOTS: usize = 1024;
/// The buffer group id of the receive ring.
const BGID: u16 = 0;
/// Completions copied out of the ring per batch.
const CQE_BATCH: usize = 256;

/// How much of a source address `recvmsg` writes (an IPv6 sockaddr holds either family).
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// `struct io_uring_recvmsg_out`: the header a multishot recvmsg writes before name and data.
const RECVMSG_OUT_LEN: usize = 16;
/// Where the payload starts in a receive buffer.
const PAYLOAD_AT: usize = RECVMSG_OUT_LEN + NAME_LEN;

fn tagged(tag: u64, payload: u64) -> u64 {
    tag << TAG_SHIFT | (payload & PAYLOAD_MASK)
}

/// The provided buffer ring: `RECV_BUFFERS` entries the kernel picks receive buffers from, and
/// the buffers themselves. We hand a buffer back after its datagram was processed.
struct BufRing {
    /// `RECV_BUFFERS` × 16-byte entries, page-aligned (mmap).
    ring: *mut BufRingEntry,
    ring_len: usize,
    bufs: Box<[[u8; BUF_SIZE]]>,
    /// Our copy of the tail; published to the kernel after each batch.
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let ring_len = usize::from(RECV_BUFFERS) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            ring: ptr.cast(),
            ring_len,
            bufs: vec![[0u8; BUF_SIZE]; usize::from(RECV_BUFFERS)].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..RECV_BUFFERS {
            r.give_back(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Queue buffer `bid` for the kernel (visible at the next [`Self::publish`]).
    fn give_back(&mut self, bid: u16) {
        let mask = RECV_BUFFERS - 1;
        let i = usize::from(self.tail & mask);
        let addr = self.bufs[usize::from(bid)].as_mut_ptr() as u64;
        // SAFETY: i < RECV_BUFFERS, inside the mapping; the kernel reads only entries between
        // its head and the published tail, and this one is past the published tail.
        let e = unsafe { &mut *self.ring.add(i) };
        e.set_addr(addr);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail is the `resv` field of entry 0, a u16 the kernel reads atomically.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the ring (which reads it) is dropped before us
        // (field order in `UringDriver`).
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

struct CallIo {
    generation: u32,
    sockets: Vec<Option<UdpSocket>>,
}

/// The send side: the ring (its submission queue), the call sockets' table and the send slab.
pub(crate) struct UringIo {
    ring: IoUring,
    calls: Vec<Option<CallIo>>,
    /// Send copies and their destinations, by slot; `free` lists the slots not in flight.
    send_bufs: Box<[[u8; BUF_SIZE]]>,
    send_addrs: Box<[libc::sockaddr_storage]>,
    free: Vec<u16>,
    /// The msghdr every multishot receive is armed with (only its name/control lengths are
    /// read; kept alive for the ring's lifetime).
    recv_msg: Box<libc::msghdr>,
    /// Sockets of ended calls, closed once the SQEs that use them were submitted.
    closing: Vec<UdpSocket>,
    /// Completions reaped while waiting for a free send slot, for the next `deliver`.
    deferred: Vec<cqueue::Entry>,
    sent: u64,
    send_errors: u64,
    enters: u64,
}

impl UringIo {
    fn fd(&self, key: SockKey) -> Option<RawFd> {
        let c = self.calls.get(key.call.slot as usize)?.as_ref()?;
        if c.generation != key.call.generation {
            return None;
        }
        c.sockets
            .get(usize::from(key.socket))?
            .as_ref()
            .map(|s| s.as_raw_fd())
    }

    /// Queue one SQE; when the queue is full, submit what is there first.
    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: every pointer an SQE carries (send slab, msghdr, waker buffer) lives as
            // long as the ring and is not reused before the SQE's completion.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            self.enters += 1;
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "io_uring submit failed");
                return;
            }
        }
    }

    fn arm_recv(&mut self, key: SockKey, fd: RawFd) {
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msg, BGID)
            .build()
            .user_data(tagged(TAG_RECV, key.encode()));
        self.push(&sqe);
    }

    /// A send completed: its slot is free again.
    fn on_send_done(&mut self, slot: u64, result: i32) {
        self.free.push(slot as u16);
        if result < 0 {
            self.send_errors += 1;
        } else {
            self.sent += 1;
        }
    }

    /// Every send slot is in flight: submit, wait for a completion, and keep the receive
    /// completions reaped meanwhile for the next `deliver`.
    fn wait_for_send_slot(&mut self) {
        while self.free.is_empty() {
            self.enters += 1;
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "io_uring wait for a send slot failed");
                    return;
                }
            }
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let ud = cqe.user_data();
                if ud >> TAG_SHIFT == TAG_SEND {
                    self.free.push((ud & PAYLOAD_MASK) as u16);
                    if cqe.result() < 0 {
                        self.send_errors += 1;
                    } else {
                        self.sent += 1;
                    }
                } else {
                    self.deferred.push(cqe);
                }
            }
        }
    }
}

impl ShardIo for UringIo {
    fn send(&mut self, via: SockKey, to: SocketAddr, data: &[u8]) {
        let Some(fd) = self.fd(via) else {
            self.send_errors += 1;
            return;
        };
        if data.len() > BUF_SIZE {
            self.send_errors += 1;
            return;
        }
        if self.free.is_empty() {
            self.wait_for_send_slot();
        }
        let Some(slot) = self.free.pop() else {
            self.send_errors += 1;
            return;
        };
        let i = usize::from(slot);
        self.send_bufs[i][..data.len()].copy_from_slice(data);
        let addr_len = std_to_sockaddr(to, &mut self.send_addrs[i]);
        let sqe = opcode::Send::new(Fd(fd), self.send_bufs[i].as_ptr(), data.len() as u32)
            .dest_addr((&self.send_addrs[i] as *const libc::sockaddr_storage).cast())
            .dest_addr_len(addr_len)
            .build()
            .user_data(tagged(TAG_SEND, u64::from(slot)));
        self.push(&sqe);
    }

    fn attach(&mut self, call: SlotKey, sockets: Vec<Option<UdpSocket>>) {
        let idx = call.slot as usize;
        if self.calls.len() <= idx {
            self.calls.resize_with(idx + 1, || None);
        }
        for (i, s) in sockets.iter().enumerate() {
            if let Some(s) = s {
                let key = SockKey {
                    call,
                    socket: i as u16,
                };
                self.arm_recv(key, s.as_raw_fd());
            }
        }
        self.calls[idx] = Some(CallIo {
            generation: call.generation,
            sockets,
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
        let Some(c) = slot.take() else { return };
        for (i, s) in c.sockets.into_iter().enumerate() {
            let Some(s) = s else { continue };
            let key = SockKey {
                call,
                socket: i as u16,
            };
            let cancel = opcode::AsyncCancel::new(tagged(TAG_RECV, key.encode()))
                .build()
                .user_data(tagged(TAG_CANCEL, 0));
            self.push(&cancel);
            // Closed after the next submit: the BYEs queued on it are still to be issued.
            self.closing.push(s);
        }
    }

    fn attach_socket(&mut self, key: SockKey, socket: UdpSocket) -> io::Result<()> {
        let Some(c) = self
            .calls
            .get_mut(key.call.slot as usize)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == key.call.generation)
        else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such call"));
        };
        let i = usize::from(key.socket);
        if c.sockets.len() <= i {
            c.sockets.resize_with(i + 1, || None);
        }
        let fd = socket.as_raw_fd();
        c.sockets[i] = Some(socket);
        self.arm_recv(key, fd);
        Ok(())
    }

    fn detach_socket(&mut self, key: SockKey) {
        let Some(s) = self
            .calls
            .get_mut(key.call.slot as usize)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == key.call.generation)
            .and_then(|c| c.sockets.get_mut(usize::from(key.socket))?.take())
        else {
            return;
        };
        let cancel = opcode::AsyncCancel::new(tagged(TAG_RECV, key.encode()))
            .build()
            .user_data(tagged(TAG_CANCEL, 0));
        self.push(&cancel);
        self.closing.push(s);
    }
}

pub(crate) struct UringDriver {
    // Field order matters for drop: the ring (inside `io`) goes before the buffer ring it reads.
    io: UringIo,
    bufs: BufRing,
    waker: Waker,
    /// Where the waker's eventfd read lands.
    waker_buf: Box<u64>,
    cqes: Box<[std::mem::MaybeUninit<cqueue::Entry>]>,
    recv_errors: u64,
}

impl UringDriver {
    /// Set up the ring on the calling thread (the shard's: `SINGLE_ISSUER` binds the ring to
    /// it). Fails where io_uring or a feature it needs is missing or refused.
    pub(crate) fn new(waker: Waker) -> io::Result<UringDriver> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .setup_submit_all()
            .build(SQ_ENTRIES)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (wait timeouts)",
            ));
        }
        waker.set_nonblocking(false)?;
        let bufs = BufRing::new()?;
        // SAFETY: the ring memory lives in `bufs`, which outlives the ring (field order).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring as u64,
                RECV_BUFFERS,
                BGID,
                0,
            )?;
        }
        // SAFETY: an all-zero msghdr is valid; only the name length is set.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
        // SAFETY: as for RecvBatch::new.
        let zeroed_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut d = UringDriver {
            io: UringIo {
                ring,
                calls: Vec::new(),
                send_bufs: vec![[0u8; BUF_SIZE]; SEND_SLOTS].into_boxed_slice(),
                send_addrs: vec![zeroed_addr; SEND_SLOTS].into_boxed_slice(),
                free: (0..SEND_SLOTS as u16).rev().collect(),
                recv_msg,
                closing: Vec::new(),
                deferred: Vec::with_capacity(CQ_ENTRIES as usize),
                sent: 0,
                send_errors: 0,
                enters: 0,
            },
            bufs,
            waker,
            waker_buf: Box::new(0),
            cqes: (0..CQE_BATCH)
                .map(|_| std::mem::MaybeUninit::uninit())
                .collect(),
            recv_errors: 0,
        };
        d.arm_waker();
        // Prove the ring works before the shard commits to it.
        d.io.enters += 1;
        d.io.ring.submit()?;
        Ok(d)
    }

    fn arm_waker(&mut self) {
        let sqe = opcode::Read::new(
            Fd(self.waker.raw_fd()),
            (&mut *self.waker_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(tagged(TAG_WAKER, 0));
        self.io.push(&sqe);
    }

    fn on_completion(&mut self, cqe: &cqueue::Entry, now: Instant, core: &mut ShardCore) {
        let ud = cqe.user_data();
        let result = cqe.result();
        match ud >> TAG_SHIFT {
            TAG_SEND => self.io.on_send_done(ud & PAYLOAD_MASK, result),
            TAG_WAKER => self.arm_waker(),
            TAG_CANCEL => {}
            _ => self.on_recv(SockKey::decode(ud & PAYLOAD_MASK), cqe, now, core),
        }
    }

    fn on_recv(&mut self, key: SockKey, cqe: &cqueue::Entry, now: Instant, core: &mut ShardCore) {
        let flags = cqe.flags();
        let result = cqe.result();
        if let Some(bid) = cqueue::buffer_select(flags) {
            if result >= 0 {
                self.deliver_buffer(key, bid, result as usize, now, core);
            }
            self.bufs.give_back(bid);
        } else if result < 0 && result != -libc::ECANCELED && result != -libc::ENOBUFS {
            // ENOBUFS: the buffer ring ran dry; the datagrams wait in the socket and the
            // receive is re-armed below.
            self.recv_errors += 1;
        }
        // A multishot receive without F_MORE has stopped (out of buffers, an error): re-arm it
        // if its call is still here.
        if !cqueue::more(flags)
            && let Some(fd) = self.io.fd(key)
        {
            self.io.arm_recv(key, fd);
        }
    }

    /// Hand the datagram in receive buffer `bid` (`written` bytes: header, name, payload) to the
    /// core.
    fn deliver_buffer(
        &mut self,
        key: SockKey,
        bid: u16,
        written: usize,
        now: Instant,
        core: &mut ShardCore,
    ) {
        let Some(buf) = self.bufs.bufs.get_mut(usize::from(bid)) else {
            return;
        };
        if written < PAYLOAD_AT {
            self.recv_errors += 1;
            return;
        }
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let (namelen, payloadlen, msg_flags) = (word(0) as usize, word(8) as usize, word(12));
        // A datagram larger than the buffer is never valid media: counted like recvmmsg's
        // truncation, as an empty datagram the call drops.
        let len = if msg_flags & libc::MSG_TRUNC as u32 != 0 {
            0
        } else {
            payloadlen.min(written - PAYLOAD_AT)
        };
        let from = if namelen <= NAME_LEN {
            // SAFETY: all-zero sockaddr_storage is valid; the name bytes the kernel wrote are
            // copied over its start.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: NAME_LEN bytes fit in a sockaddr_storage; source and destination do not
            // overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf[RECVMSG_OUT_LEN..].as_ptr(),
                    (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
                    namelen,
                );
            }
            sockaddr_to_std(&ss)
        } else {
            None
        };
        core.on_datagram(now, key, from, &mut buf[PAYLOAD_AT..], len, &mut self.io);
    }
}

impl Driver for UringDriver {
    type Io = UringIo;

    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn wait(&mut self, deadline: Instant) -> io::Result<()> {
        // Completions reaped while waiting for a send slot are ready now.
        let deadline = if self.io.deferred.is_empty() {
            deadline
        } else {
            Instant::now()
        };
        let ts = Timespec::from(deadline.saturating_duration_since(Instant::now()));
        let args = SubmitArgs::new().timespec(&ts);
        self.io.enters += 1;
        let r = self.io.ring.submitter().submit_with_args(1, &args);
        // The SQEs that named the ended calls' sockets have been issued: close them.
        self.io.closing.clear();
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn deliver(&mut self, now: Instant, core: &mut ShardCore) {
        let mut deferred = std::mem::take(&mut self.io.deferred);
        for cqe in &deferred {
            self.on_completion(cqe, now, core);
        }
        deferred.clear();
        // Keep the allocation (a send-slot wait may have pushed into a fresh Vec meanwhile).
        if self.io.deferred.is_empty() {
            self.io.deferred = deferred;
        }
        loop {
            let n = {
                let mut cq = self.io.ring.completion();
                cq.fill(&mut self.cqes).len()
            };
            if n == 0 {
                break;
            }
            for i in 0..n {
                // SAFETY: `fill` initialised the first n entries.
                let cqe = unsafe { self.cqes[i].assume_init_ref() }.clone();
                self.on_completion(&cqe, now, core);
            }
            self.bufs.publish();
        }
        self.bufs.publish();
    }

    fn io(&mut self) -> &mut UringIo {
        &mut self.io
    }

    fn flush(&mut self) {
        // Sends go to the kernel with the next wait's io_uring_enter: one system call a turn.
    }

    fn finish(&mut self) {
        self.io.enters += 1;
        let _ = self.io.ring.submit();
        self.io.closing.clear();
    }

    fn counters(&self) -> IoCounters {
        let mut syscalls = [0; IO_SYSCALLS.len()];
        syscalls[IoSyscall::IoUringEnter as usize] = self.io.enters;
        IoCounters {
            sent: self.io.sent,
            send_errors: self.io.send_errors,
            recv_errors: self.recv_errors,
            syscalls,
        }
    }
}
