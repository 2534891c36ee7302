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
//! interrupts the thread at every packet. Sockets are registered files (a table sized to the
//! open-file limit; past it, by descriptor): `fget` + `sock_from_file` per send were 5.9 % of
//! the shard's CPU, 3.3 % with registered files (perf, 2026-12-05 session 8). Forwarded media
//! is sent straight from the receive buffer it arrived in ([`UringConfig::zero_copy`]); other
//! sends are copied into a slab the ring reads from.
//!
//! user_data: a receive carries its [`SockKey`] (slot, socket index, generation), so a
//! completion for a removed call is recognised even after its slot was reused; a connected
//! twin's receive (see [`ShardIo::connect_twin`]) carries the same key with [`TWIN_BIT`]. The top
//! two bits tag the driver's own operations (sends, the waker read, cancels).
//!
//! No allocation per packet: the receive buffers, the send slab and the completion scratch
//! are allocated when the shard starts.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::engine::core::{IoCounters, ShardCore, ShardIo, SlotKey, SockKey, TWIN_BIT};
use crate::engine::driver::{Driver, Waker};
use crate::engine::sockets::open_twin;
use crate::engine::udp::{BUF_SIZE, has_queued, sockaddr_to_std, std_to_sockaddr};
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
/// Slots in the registered file table (a call socket takes one while its call lives; past
/// that, sockets are named by descriptor).
const FIXED_FILES: u32 = 1 << 16;
/// The buffer group id of the receive ring.
const BGID: u16 = 0;
/// `io_uring_enter`'s flag to reap completions (and run deferred completion work); the crate
/// keeps its `sys` constants private.
const IORING_ENTER_GETEVENTS: u32 = 1;
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

/// How the driver is sized and tuned. Production uses [`UringConfig::default`]; the tests shrink
/// the pools to run them dry. `RELAY_URING` (`key=value,...`, the fields' names) overrides the
/// defaults for benchmarking.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct UringConfig {
    /// Receive buffers in the provided ring (a power of two). When they run out, multishot
    /// receives stop with ENOBUFS and are re-armed; the datagrams wait in their sockets.
    pub recv_buffers: u16,
    /// Sends in flight at once (copies the kernel reads until it completes them).
    pub send_slots: u16,
    /// Batched wait: once the loop waits, let completions gather for up to this long before
    /// waking (`min_wait_usec`, kernel 6.12+), unless `batch_want` arrive first. 0: wake at the
    /// first completion.
    pub batch_wait_us: u32,
    /// Completions that end a batched wait early.
    pub batch_want: u32,
    /// Name sockets by registered file index (`IOSQE_FIXED_FILE`) instead of descriptor.
    pub fixed_files: bool,
    /// Send a datagram that lies in the receive buffer it arrived in straight from there (the
    /// buffer goes back to the ring when the send completes) instead of copying it into the
    /// send slab.
    pub zero_copy: bool,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            // 4 MiB per shard, touched only as deep as a turn's datagrams reach.
            recv_buffers: 2048,
            // A turn with more sends submits and reaps early (UDP sends complete as issued).
            send_slots: 256,
            // At 400 evenly spaced calls a turn then carries ~8 datagrams instead of one: about
            // half the CPU per packet (6.3 vs 12.5 µs, 2026-12-05) for at most 0.2 ms more
            // latency (BENCHMARKS.md, issue 17).
            batch_wait_us: 200,
            batch_want: 32,
            // 2026-12-05 session 8: the per-send file lookup 5.9 % → 3.3 % of the shard's CPU,
            // 5.3 vs 5.5 µs per packet (3 interleaved rounds; BENCHMARKS.md).
            fixed_files: true,
            zero_copy: true,
        }
    }
}

impl UringConfig {
    /// The defaults with `RELAY_URING`'s overrides (unknown keys and bad values are logged and
    /// ignored).
    pub(crate) fn from_env() -> UringConfig {
        let mut c = UringConfig::default();
        let Ok(spec) = std::env::var("RELAY_URING") else {
            return c;
        };
        for kv in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            let ok = match k {
                "recv_buffers" => v
                    .parse()
                    .ok()
                    .filter(|n: &u16| n.is_power_of_two())
                    .map(|n| c.recv_buffers = n),
                "send_slots" => v.parse().ok().filter(|n| *n > 0).map(|n| c.send_slots = n),
                "batch_wait_us" => v.parse().ok().map(|n| c.batch_wait_us = n),
                "batch_want" => v.parse().ok().filter(|n| *n > 0).map(|n| c.batch_want = n),
                "fixed_files" => v.parse().ok().map(|b: u8| c.fixed_files = b != 0),
                "zero_copy" => v.parse().ok().map(|b: u8| c.zero_copy = b != 0),
                _ => None,
            };
            if ok.is_none() {
                tracing::warn!(setting = kv, "RELAY_URING: ignored");
            }
        }
        tracing::info!(config = ?c, "RELAY_URING: io_uring driver settings overridden");
        c
    }
}

/// The provided buffer ring: [`UringConfig::recv_buffers`] entries the kernel picks receive buffers from, and
/// the buffers themselves. We hand a buffer back after its datagram was processed.
struct BufRing {
    /// `entries` × 16-byte entries, page-aligned (mmap).
    ring: *mut BufRingEntry,
    ring_len: usize,
    entries: u16,
    /// `entries` buffers (a leaked boxed slice, freed in `drop`): the kernel writes into them,
    /// the core works on them in place and zero-copy sends read from them, so they are reached
    /// through this pointer, never through a `Box` whose uniqueness that would contradict.
    bufs: *mut [u8; BUF_SIZE],
    /// Our copy of the tail; published to the kernel after each batch.
    tail: u16,
}

impl BufRing {
    fn new(entries: u16) -> io::Result<BufRing> {
        let ring_len = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
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
            entries,
            bufs: Box::into_raw(vec![[0u8; BUF_SIZE]; usize::from(entries)].into_boxed_slice())
                .cast(),
            tail: 0,
        };
        for bid in 0..entries {
            r.give_back(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Queue buffer `bid` for the kernel (visible at the next [`Self::publish`]).
    fn give_back(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let i = usize::from(self.tail & mask);
        let addr = self.buf_ptr(bid) as u64;
        // SAFETY: i < entries, inside the mapping; the kernel reads only entries between
        // its head and the published tail, and this one is past the published tail.
        let e = unsafe { &mut *self.ring.add(i) };
        e.set_addr(addr);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// The start of buffer `bid` (< `entries`).
    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.entries);
        // SAFETY: bid < entries: inside the allocation.
        unsafe { self.bufs.add(usize::from(bid)).cast() }
    }

    /// Buffer `bid`'s bytes, while the core handles the datagram in it.
    ///
    /// # Safety
    /// `bid` was handed to us by the kernel (it will not write the buffer until given back)
    /// and no other reference to the buffer is live.
    unsafe fn buf_mut<'a>(&self, bid: u16) -> Option<&'a mut [u8; BUF_SIZE]> {
        if bid >= self.entries {
            return None;
        }
        // SAFETY: in bounds (checked); exclusive per the caller's contract.
        Some(unsafe { &mut *self.bufs.add(usize::from(bid)) })
    }

    /// Does `data` lie inside buffer `bid`?
    fn holds(&self, bid: u16, data: &[u8]) -> bool {
        if bid >= self.entries {
            return false;
        }
        let start = self.buf_ptr(bid) as usize;
        let p = data.as_ptr() as usize;
        p >= start && p + data.len() <= start + BUF_SIZE
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
        // SAFETY: the boxed slice leaked in `new`, with its length; nothing reads it any more.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.bufs,
                usize::from(self.entries),
            ))
        });
    }
}

/// One call socket as the ring sees it.
struct SockIo {
    sock: UdpSocket,
    /// Its registered file index, when it has one.
    fixed: Option<u32>,
    /// Its connected twin, while the socket's peer is fixed (see [`ShardIo::connect_twin`]).
    twin: Option<Twin>,
}

/// A socket's connected twin: same local address and port (`SO_REUSEPORT`), `connect`ed to
/// `peer`. Its receive carries the primary's key with [`TWIN_BIT`]; it takes a registered file
/// slot like any socket (past the table, its descriptor).
struct Twin {
    sock: UdpSocket,
    fixed: Option<u32>,
    peer: SocketAddr,
}

fn target_of(sock: &UdpSocket, fixed: Option<u32>) -> Target {
    match fixed {
        Some(i) => Target::Fixed(i),
        None => Target::Fd(sock.as_raw_fd()),
    }
}

impl SockIo {
    fn target(&self) -> Target {
        target_of(&self.sock, self.fixed)
    }
}

/// How an SQE names a socket.
#[derive(Copy, Clone)]
enum Target {
    Fd(RawFd),
    Fixed(u32),
}

struct CallIo {
    generation: u32,
    sockets: Vec<Option<SockIo>>,
}

/// The send side: the ring (its submission queue), the call sockets' table and the send slab.
pub(crate) struct UringIo {
    ring: IoUring,
    cfg: UringConfig,
    calls: Vec<Option<CallIo>>,
    /// Send copies and their destinations, by slot; `free` lists the slots not in flight.
    send_bufs: Box<[[u8; BUF_SIZE]]>,
    send_addrs: Box<[libc::sockaddr_storage]>,
    free: Vec<u16>,
    /// Registered file indices not in use (empty without [`UringConfig::fixed_files`]).
    fixed_free: Vec<u32>,
    /// The msghdr every multishot receive is armed with (only its name/control lengths are
    /// read; kept alive for the ring's lifetime).
    recv_msg: Box<libc::msghdr>,
    /// Sockets of ended calls, closed (and their file slots released) once the SQEs that use
    /// them were submitted.
    closing: Vec<UdpSocket>,
    closing_fixed: Vec<u32>,
    /// Completions reaped while freeing send slots, for the next `deliver`.
    deferred: Vec<cqueue::Entry>,
    sent: u64,
    send_errors: u64,
    /// Sends dropped because every send slot was in flight (counted in `send_errors` too).
    send_slots_full: u64,
    enters: u64,
    /// Per send slot: the receive buffer it sends from ([`UringConfig::zero_copy`]), or
    /// [`NO_RX`] for a copy in the slab.
    slot_rx: Box<[u16]>,
    /// Per receive buffer: references that keep it from the kernel (the core handling its
    /// datagram, sends in flight from it). It goes back to the ring when they reach zero.
    rx_refs: Box<[u16]>,
    /// The receive buffer whose datagram the core is handling now.
    rx_cur: Option<u16>,
    /// Sends made straight from a receive buffer.
    zero_copy_sends: u64,
    /// Connected twins open now, and twins that could not be opened.
    twins: u64,
    twin_failures: u64,
    /// Sends that went out on a connected twin (no address), datagrams received on one.
    twin_sends: u64,
    twin_recvs: u64,
    /// Debug builds: what the zero-copy sends of the current datagram read, to prove after the
    /// core is done with it that nothing wrote a region after pushing it (see `Outbox`).
    #[cfg(debug_assertions)]
    zc_check: ZeroCopyCheck,
    /// The provided buffer ring. Last, so it is dropped after the ring that reads it.
    bufs: BufRing,
}

/// [`UringIo::slot_rx`] of a send copied into the slab.
const NO_RX: u16 = u16::MAX;

/// Debug builds: fingerprints of the regions zero-copy sends read, checked when the core is done
/// with the datagram (a write after a push would make the kernel send other bytes).
#[cfg(debug_assertions)]
#[derive(Default)]
struct ZeroCopyCheck {
    n: usize,
    regions: [(usize, usize, u64); 4],
}

#[cfg(debug_assertions)]
impl ZeroCopyCheck {
    fn fingerprint(p: *const u8, len: usize) -> u64 {
        // SAFETY: a region of a live receive buffer (checked by `BufRing::holds`).
        let b = unsafe { std::slice::from_raw_parts(p, len) };
        b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
        })
    }

    fn note(&mut self, data: &[u8]) {
        if let Some(r) = self.regions.get_mut(self.n) {
            *r = (
                data.as_ptr() as usize,
                data.len(),
                Self::fingerprint(data.as_ptr(), data.len()),
            );
            self.n += 1;
        }
    }

    fn verify(&mut self) {
        for &(p, len, h) in &self.regions[..self.n] {
            assert_eq!(
                Self::fingerprint(p as *const u8, len),
                h,
                "a receive-buffer region was written after it was pushed (Outbox contract)"
            );
        }
        self.n = 0;
    }
}

impl UringIo {
    fn sock(&mut self, key: SockKey) -> Option<&mut SockIo> {
        live_call(&mut self.calls, key.call)?
            .sockets
            .get_mut(usize::from(key.socket))?
            .as_mut()
    }

    fn target(&mut self, key: SockKey) -> Option<Target> {
        self.sock(key).map(|s| s.target())
    }

    fn twin_target(&mut self, key: SockKey) -> Option<Target> {
        self.sock(key)
            .and_then(|s| s.twin.as_ref())
            .map(|t| target_of(&t.sock, t.fixed))
    }

    /// Stop receiving on a closed-down twin of socket `key` and close it once the SQEs that
    /// use it (sends queued this turn) were submitted. Every receive armed on it is cancelled
    /// (`ALL`: a re-arm may have raced a stop). Datagrams from its peer still queued on it are
    /// lost; the peer's later ones reach the primary (or the next twin).
    fn close_twin(&mut self, key: SockKey, t: Twin) {
        let cancel = opcode::AsyncCancel2::new(
            CancelBuilder::user_data(tagged(TAG_RECV, key.encode_twin())).all(),
        )
        .build()
        .user_data(tagged(TAG_CANCEL, 0));
        self.push(&cancel);
        self.closing.push(t.sock);
        self.closing_fixed.extend(t.fixed);
        self.twins = self.twins.saturating_sub(1);
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
            self.after_submit();
        }
    }

    /// The SQEs that named ended calls' sockets have been issued: close them and free their
    /// file slots.
    fn after_submit(&mut self) {
        self.closing.clear();
        if self.closing_fixed.is_empty() {
            return;
        }
        for i in std::mem::take(&mut self.closing_fixed) {
            match self.ring.submitter().register_files_update(i, &[-1]) {
                Ok(_) => self.fixed_free.push(i),
                Err(e) => tracing::warn!(error = %e, index = i, "io_uring file slot release"),
            }
        }
    }

    fn arm_recv(&mut self, key: SockKey, target: Target) {
        self.arm_recv_as(key.encode(), target);
    }

    /// Arm a multishot receive on `target` whose completions carry `encoded` (a key, with
    /// [`TWIN_BIT`] for a twin).
    fn arm_recv_as(&mut self, encoded: u64, target: Target) {
        let sqe = match target {
            Target::Fd(fd) => opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msg, BGID).build(),
            Target::Fixed(i) => opcode::RecvMsgMulti::new(Fixed(i), &*self.recv_msg, BGID).build(),
        };
        self.push(&sqe.user_data(tagged(TAG_RECV, encoded)));
    }

    /// Drop one reference to receive buffer `bid`; the last one gives it back to the kernel
    /// (visible at the next publish).
    fn release_rx(&mut self, bid: u16) {
        let Some(r) = self.rx_refs.get_mut(usize::from(bid)) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.bufs.give_back(bid);
        }
    }

    /// A send completed: its slot is free again (and the receive buffer it sent from, if it
    /// was the last reference).
    fn on_send_done(&mut self, slot: u64, result: i32) {
        let slot = slot as u16;
        self.free.push(slot);
        if let Some(rx) = self.slot_rx.get_mut(usize::from(slot)) {
            let bid = std::mem::replace(rx, NO_RX);
            if bid != NO_RX {
                self.release_rx(bid);
            }
        }
        if result < 0 {
            self.send_errors += 1;
        } else {
            self.sent += 1;
        }
    }

    /// Every send slot is in flight: submit what is queued and collect the completions that
    /// are ready, without waiting (UDP sends complete as they are issued, so this frees the
    /// slots unless the kernel is holding sends back). Receive completions reaped meanwhile
    /// are kept for the next `deliver`.
    fn reap_sends(&mut self) {
        let pending = self.ring.submission().len() as u32;
        self.enters += 1;
        // SAFETY: no argument pointer (GETEVENTS with min_complete 0 runs the deferred
        // completion work and returns).
        let r = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(pending, 0, IORING_ENTER_GETEVENTS, None)
        };
        if let Err(e) = r
            && e.raw_os_error() != Some(libc::EINTR)
        {
            tracing::error!(error = %e, "io_uring submit (send slots full) failed");
        }
        self.after_submit();
        loop {
            let cqe = {
                let mut cq = self.ring.completion();
                cq.sync();
                cq.next()
            };
            let Some(cqe) = cqe else { break };
            let ud = cqe.user_data();
            if ud >> TAG_SHIFT == TAG_SEND {
                self.on_send_done(ud & PAYLOAD_MASK, cqe.result());
            } else {
                self.deferred.push(cqe);
            }
        }
        self.bufs.publish();
    }
    /// A socket joining the ring: registered as a fixed file while a slot is free.
    fn sock_io(&mut self, sock: UdpSocket) -> SockIo {
        let fixed = self.register(&sock);
        SockIo {
            sock,
            fixed,
            twin: None,
        }
    }

    /// A registered file slot for `sock`, while one is free.
    fn register(&mut self, sock: &UdpSocket) -> Option<u32> {
        self.fixed_free.pop().and_then(|f| {
            match self
                .ring
                .submitter()
                .register_files_update(f, &[sock.as_raw_fd()])
            {
                Ok(_) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring file registration; using the fd");
                    self.fixed_free.push(f);
                    None
                }
            }
        })
    }
}

impl ShardIo for UringIo {
    fn queued(&mut self, key: SockKey) -> bool {
        // Datagrams the kernel already moved into receive buffers were handed to the core by
        // the collect before timers; what is left waits in the socket.
        // The peer's datagrams wait on the connected twin, if the socket has one.
        self.sock(key).is_some_and(|s| {
            has_queued(s.sock.as_raw_fd())
                || s.twin
                    .as_ref()
                    .is_some_and(|t| has_queued(t.sock.as_raw_fd()))
        })
    }

    fn send(&mut self, via: SockKey, to: SocketAddr, data: &[u8]) {
        if data.len() > BUF_SIZE {
            self.send_errors += 1;
            return;
        }
        if self.free.is_empty() {
            self.reap_sends();
        }
        let Some(sock) = self.sock(via) else {
            self.send_errors += 1;
            return;
        };
        // To the peer of the socket's connected twin: on the twin, without an address.
        let (target, connected) = match &sock.twin {
            Some(t) if t.peer == to => (target_of(&t.sock, t.fixed), true),
            _ => (sock.target(), false),
        };
        let Some(slot) = self.free.pop() else {
            // Dropped and counted: waiting here would stall every call of the shard.
            self.send_errors += 1;
            self.send_slots_full += 1;
            return;
        };
        let i = usize::from(slot);
        // Straight from the receive buffer the datagram arrived in, when it lies there: the
        // buffer stays ours until this send completes.
        let rx = (self.rx_cur).filter(|&bid| self.cfg.zero_copy && self.bufs.holds(bid, data));
        let buf = match rx {
            Some(bid) => {
                self.rx_refs[usize::from(bid)] += 1;
                self.slot_rx[i] = bid;
                self.zero_copy_sends += 1;
                #[cfg(debug_assertions)]
                self.zc_check.note(data);
                data.as_ptr()
            }
            None => {
                self.send_bufs[i][..data.len()].copy_from_slice(data);
                self.send_bufs[i].as_ptr()
            }
        };
        let len = data.len() as u32;
        let sqe = match target {
            Target::Fd(fd) => opcode::Send::new(Fd(fd), buf, len),
            Target::Fixed(f) => opcode::Send::new(Fixed(f), buf, len),
        };
        let sqe = if connected {
            self.twin_sends += 1;
            sqe.build()
        } else {
            let addr_len = std_to_sockaddr(to, &mut self.send_addrs[i]);
            sqe.dest_addr((&self.send_addrs[i] as *const libc::sockaddr_storage).cast())
                .dest_addr_len(addr_len)
                .build()
        };
        self.push(&sqe.user_data(tagged(TAG_SEND, u64::from(slot))));
    }

    fn attach(&mut self, call: SlotKey, sockets: Vec<Option<UdpSocket>>) {
        let idx = call.slot as usize;
        if self.calls.len() <= idx {
            self.calls.resize_with(idx + 1, || None);
        }
        let mut ios = Vec::with_capacity(sockets.len());
        for (i, s) in sockets.into_iter().enumerate() {
            let Some(sock) = s else {
                ios.push(None);
                continue;
            };
            let io = self.sock_io(sock);
            let key = SockKey {
                call,
                socket: i as u16,
            };
            self.arm_recv(key, io.target());
            ios.push(Some(io));
        }
        self.calls[idx] = Some(CallIo {
            generation: call.generation,
            sockets: ios,
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
            if let Some(t) = s.twin {
                self.close_twin(key, t);
            }
            // Closed after the next submit: the BYEs queued on it are still to be issued.
            self.closing.push(s.sock);
            self.closing_fixed.extend(s.fixed);
        }
    }

    fn attach_socket(&mut self, key: SockKey, socket: UdpSocket) -> io::Result<()> {
        let Some(c) = live_call(&mut self.calls, key.call) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such call"));
        };
        let i = usize::from(key.socket);
        if c.sockets.len() <= i {
            c.sockets.resize_with(i + 1, || None);
        }
        let io = self.sock_io(socket);
        self.arm_recv(key, io.target());
        if let Some(c) = live_call(&mut self.calls, key.call) {
            c.sockets[i] = Some(io);
        }
        Ok(())
    }

    fn detach_socket(&mut self, key: SockKey) {
        let Some(s) = live_call(&mut self.calls, key.call)
            .and_then(|c| c.sockets.get_mut(usize::from(key.socket))?.take())
        else {
            return;
        };
        let cancel = opcode::AsyncCancel::new(tagged(TAG_RECV, key.encode()))
            .build()
            .user_data(tagged(TAG_CANCEL, 0));
        self.push(&cancel);
        if let Some(t) = s.twin {
            self.close_twin(key, t);
        }
        self.closing.push(s.sock);
        self.closing_fixed.extend(s.fixed);
    }

    fn connect_twin(&mut self, key: SockKey, peer: Option<SocketAddr>) {
        let Some(sock) = self.sock(key) else { return };
        if let Some(t) = &sock.twin
            && Some(t.peer) == peer
        {
            return;
        }
        let old = sock.twin.take();
        let local = sock.sock.local_addr();
        if let Some(t) = old {
            self.close_twin(key, t);
        }
        let Some(peer) = peer else { return };
        // Opened fresh for every peer rather than re-connected in place: sends to the old peer
        // queued this turn (a transfer's BYE) name the old twin and must leave from it.
        let twin = local.and_then(|local| open_twin(local, peer));
        let twin = match twin {
            Ok(t) => t,
            Err(e) => {
                self.twin_failures += 1;
                tracing::debug!(error = %e, %peer, "connected twin not opened; sends stay on the socket");
                return;
            }
        };
        let fixed = self.register(&twin);
        self.arm_recv_as(key.encode_twin(), target_of(&twin, fixed));
        if let Some(s) = self.sock(key) {
            s.twin = Some(Twin {
                sock: twin,
                fixed,
                peer,
            });
            self.twins += 1;
        }
    }
}

/// The process's soft limit on open files (a registered file table may not be larger).
fn nofile_limit() -> u32 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    u32::try_from(r.rlim_cur).unwrap_or(u32::MAX)
}

pub(crate) struct UringDriver {
    io: UringIo,
    waker: Waker,
    /// Where the waker's eventfd read lands.
    waker_buf: Box<u64>,
    cqes: Box<[std::mem::MaybeUninit<cqueue::Entry>]>,
    recv_errors: u64,
    /// Multishot receives stopped because the buffer ring was empty (each re-armed; the
    /// datagrams waited in their sockets).
    recv_ring_dry: u64,
}

impl UringDriver {
    /// Set up the ring on the calling thread (the shard's: `SINGLE_ISSUER` binds the ring to
    /// it). Fails where io_uring or a feature it needs is missing or refused.
    pub(crate) fn new(waker: Waker) -> io::Result<UringDriver> {
        Self::with_config(waker, UringConfig::from_env())
    }

    pub(crate) fn with_config(waker: Waker, cfg: UringConfig) -> io::Result<UringDriver> {
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
        let mut cfg = cfg;
        if !ring.params().is_feature_min_timeout() {
            // Before 6.12: no batched wait, the loop wakes at the first completion.
            cfg.batch_wait_us = 0;
        }
        // The table may not exceed the open-file limit (the kernel refuses it with EMFILE:
        // before 2026-12-05 a 65,536-slot table failed silently under a 20,000 limit, so
        // `fixed_files=1` measured nothing).
        let table = FIXED_FILES.min(nofile_limit());
        let fixed_free = if !cfg.fixed_files {
            Vec::new()
        } else {
            match ring.submitter().register_files_sparse(table) {
                Ok(()) => (0..table).rev().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, slots = table,
                        "io_uring registered file table refused; naming sockets by descriptor");
                    Vec::new()
                }
            }
        };
        waker.set_nonblocking(false)?;
        let bufs = BufRing::new(cfg.recv_buffers)?;
        // SAFETY: the ring memory lives in `bufs`, which outlives the ring (`UringIo`'s field
        // order).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring as u64,
                cfg.recv_buffers,
                BGID,
                0,
            )?;
        }
        // SAFETY: an all-zero msghdr is valid; only the name length is set.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
        // SAFETY: as for RecvBatch::new.
        let zeroed_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let slots = usize::from(cfg.send_slots);
        let mut d = UringDriver {
            io: UringIo {
                ring,
                cfg,
                calls: Vec::new(),
                send_bufs: vec![[0u8; BUF_SIZE]; slots].into_boxed_slice(),
                send_addrs: vec![zeroed_addr; slots].into_boxed_slice(),
                free: (0..cfg.send_slots).rev().collect(),
                fixed_free,
                recv_msg,
                closing: Vec::new(),
                closing_fixed: Vec::new(),
                deferred: Vec::with_capacity(CQ_ENTRIES as usize),
                sent: 0,
                send_errors: 0,
                send_slots_full: 0,
                enters: 0,
                slot_rx: vec![NO_RX; slots].into_boxed_slice(),
                rx_refs: vec![0; usize::from(cfg.recv_buffers)].into_boxed_slice(),
                rx_cur: None,
                zero_copy_sends: 0,
                twins: 0,
                twin_failures: 0,
                twin_sends: 0,
                twin_recvs: 0,
                #[cfg(debug_assertions)]
                zc_check: ZeroCopyCheck::default(),
                bufs,
            },
            waker,
            waker_buf: Box::new(0),
            cqes: (0..CQE_BATCH)
                .map(|_| std::mem::MaybeUninit::uninit())
                .collect(),
            recv_errors: 0,
            recv_ring_dry: 0,
        };
        d.arm_waker();
        // Prove the ring works before the shard commits to it.
        d.io.enters += 1;
        d.io.ring.submit()?;
        Ok(d)
    }

    /// Sends made straight from a receive buffer so far.
    #[cfg(test)]
    pub(crate) fn zero_copy_sends(&self) -> u64 {
        self.io.zero_copy_sends
    }

    /// Sends that went out on connected twins, and datagrams received on them, so far.
    #[cfg(test)]
    pub(crate) fn twin_traffic(&self) -> (u64, u64) {
        (self.io.twin_sends, self.io.twin_recvs)
    }

    /// Receive buffers held back from the kernel now (a datagram being handled, sends in
    /// flight from it).
    #[cfg(test)]
    pub(crate) fn rx_held(&self) -> usize {
        self.io.rx_refs.iter().filter(|&&r| r > 0).count()
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
            _ => self.on_recv(
                SockKey::decode(ud & PAYLOAD_MASK),
                ud & TWIN_BIT != 0,
                cqe,
                now,
                core,
            ),
        }
    }

    /// A receive completion on socket `key` (on its connected twin when `twin`: handed to
    /// the core under the same key).
    fn on_recv(
        &mut self,
        key: SockKey,
        twin: bool,
        cqe: &cqueue::Entry,
        now: Instant,
        core: &mut ShardCore,
    ) {
        let flags = cqe.flags();
        let result = cqe.result();
        if let Some(bid) = cqueue::buffer_select(flags) {
            if let Some(r) = self.io.rx_refs.get_mut(usize::from(bid)) {
                // The core's reference while it handles the datagram; sends from the buffer
                // add theirs, and the last one gives it back.
                *r += 1;
                if result >= 0 {
                    self.io.twin_recvs += u64::from(twin);
                    self.io.rx_cur = Some(bid);
                    self.deliver_buffer(key, bid, result as usize, now, core);
                    self.io.rx_cur = None;
                    #[cfg(debug_assertions)]
                    self.io.zc_check.verify();
                }
                self.io.release_rx(bid);
            }
        } else if result == -libc::ENOBUFS {
            // The buffer ring ran dry: the datagrams wait in the socket (the kernel drops,
            // and counts in UDP RcvbufErrors, what overflows it) and the receive is re-armed
            // below.
            self.recv_ring_dry += 1;
        } else if result < 0 && result != -libc::ECANCELED {
            self.recv_errors += 1;
        }
        // A multishot receive without F_MORE has stopped (out of buffers, an error): re-arm it
        // if its socket is still here. A cancelled one was closed on purpose (a twin's end: a
        // twin opened since for the same key has its own receive).
        if !cqueue::more(flags) && result != -libc::ECANCELED {
            if twin {
                if let Some(target) = self.io.twin_target(key) {
                    self.io.arm_recv_as(key.encode_twin(), target);
                }
            } else if let Some(target) = self.io.target(key) {
                self.io.arm_recv(key, target);
            }
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
        // SAFETY: the kernel handed us `bid` with this completion and gets it back only when
        // its references are gone; the core's borrow ends before this returns.
        let Some(buf) = (unsafe { self.io.bufs.buf_mut(bid) }) else {
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
        // Completions reaped while freeing send slots are ready now.
        let timeout = if self.io.deferred.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        let batch = self.io.cfg.batch_wait_us;
        // A batched wait only when it ends before the deadline (the timer must not be late).
        let (want, args) = if batch > 0 && timeout > Duration::from_micros(u64::from(batch)) {
            (self.io.cfg.batch_want as usize, args.min_wait_usec(batch))
        } else {
            (1, args)
        };
        self.io.enters += 1;
        let r = self.io.ring.submitter().submit_with_args(want, &args);
        self.io.after_submit();
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
            self.io.bufs.publish();
        }
        self.io.bufs.publish();
    }

    fn io(&mut self) -> &mut UringIo {
        &mut self.io
    }

    fn collect(&mut self, now: Instant, core: &mut ShardCore) {
        // Submit what is queued and run the deferred completion work without waiting, then
        // deliver: with DEFER_TASKRUN, datagrams that arrived during this turn are not in the
        // completion queue until an enter asks for events.
        self.io.reap_sends();
        self.deliver(now, core);
    }

    fn flush(&mut self) {
        // Sends go to the kernel with the next wait's io_uring_enter: one system call a turn.
    }

    fn finish(&mut self) {
        self.io.enters += 1;
        let _ = self.io.ring.submit();
        self.io.after_submit();
    }

    fn counters(&self) -> IoCounters {
        let mut syscalls = [0; IO_SYSCALLS.len()];
        syscalls[IoSyscall::IoUringEnter as usize] = self.io.enters;
        IoCounters {
            sent: self.io.sent,
            send_errors: self.io.send_errors,
            recv_errors: self.recv_errors,
            send_slots_full: self.io.send_slots_full,
            recv_ring_dry: self.recv_ring_dry,
            twins: self.io.twins,
            twin_failures: self.io.twin_failures,
            syscalls,
        }
    }
}

/// The call's I/O if `key` still names it (not a reused slot). A free function, so the
/// caller can keep using the ring's other fields while it holds the call.
fn live_call(calls: &mut [Option<CallIo>], key: SlotKey) -> Option<&mut CallIo> {
    calls
        .get_mut(key.slot as usize)?
        .as_mut()
        .filter(|c| c.generation == key.generation)
}
