//! Batched UDP I/O: `recvmmsg` into preallocated buffers and `sendmmsg` from a preallocated
//! batch. No allocation after construction.
//!
//! Why not quinn-udp: it has `recvmmsg` but no `sendmmsg`, and its receive path turns on GRO,
//! which coalesces datagrams of one flow into a single buffer we would have to split again. Both
//! calls are a few lines of libc, so the engine owns them and one module shows the whole I/O.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Receive buffer size: room for a 1500-byte datagram plus SRTP growth when the same buffer
/// is protected in place and forwarded.
pub const BUF_SIZE: usize = 2048;

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 32;

/// Room for one `SCM_TIMESTAMPNS` control message (CMSG_SPACE of a timespec is 32 on 64-bit).
const CONTROL: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL]);

/// Asks the kernel to timestamp datagrams arriving on `fd` (best effort), for a
/// [`RecvBatch::with_timestamps`]. The load generator's latency excludes its own read delay so.
pub fn enable_timestamps(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a c_int option of the size declared; an invalid fd only makes the call fail.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub struct RecvBatch {
    bufs: Box<[[u8; BUF_SIZE]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: [usize; BATCH],
    /// Control buffers for kernel receive timestamps ([`RecvBatch::with_timestamps`]); the
    /// engine has none (it never asks for ancillary data).
    controls: Option<Box<[Control]>>,
    /// Kernel arrival times (µs since the Unix epoch) of the last batch, when timestamped.
    stamps: [Option<u64>; BATCH],
    #[cfg(target_os = "linux")]
    iovecs: Box<[libc::iovec]>,
    #[cfg(target_os = "linux")]
    msgs: Box<[libc::mmsghdr]>,
    /// `recvmmsg` calls made (for system calls per packet).
    pub syscalls: u64,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec arrays only ever point into buffers owned
// by the same struct, and are rewritten before every syscall; moving the struct to another
// thread (once, when a shard starts) moves the buffers with it.
unsafe impl Send for RecvBatch {}
unsafe impl Send for SendBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value.
        let zeroed_addr: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        RecvBatch {
            bufs: vec![[0u8; BUF_SIZE]; BATCH].into_boxed_slice(),
            addrs: vec![zeroed_addr; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            controls: None,
            stamps: [None; BATCH],
            #[cfg(target_os = "linux")]
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ]
            .into_boxed_slice(),
            #[cfg(target_os = "linux")]
            msgs: (0..BATCH)
                .map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() })
                .collect(),
            syscalls: 0,
        }
    }

    /// A batch that also reads each datagram's kernel arrival time (the socket needs
    /// [`enable_timestamps`]); see [`RecvBatch::timestamp_us`].
    pub fn with_timestamps() -> Self {
        RecvBatch {
            controls: Some(vec![Control([0; CONTROL]); BATCH].into_boxed_slice()),
            ..Self::new()
        }
    }

    /// Kernel arrival time of datagram `i` of the last `recv`, in µs since the Unix epoch;
    /// `None` without [`RecvBatch::with_timestamps`] or when the kernel gave none.
    pub fn timestamp_us(&self, i: usize) -> Option<u64> {
        self.stamps.get(i).copied().flatten()
    }

    /// Receive up to [`BATCH`] datagrams without blocking. `Ok(0)` means the socket is drained.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_SIZE,
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            match self.controls.as_mut() {
                Some(c) => {
                    hdr.msg_control = c[i].0.as_mut_ptr().cast();
                    hdr.msg_controllen = CONTROL as _;
                }
                None => {
                    hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_controllen = 0;
                }
            }
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        self.syscalls += 1;
        // SAFETY: every msghdr points at live buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for i in 0..n {
            // A datagram larger than the buffer is truncated by the kernel (MSG_TRUNC); it is
            // never valid media, so report it as empty and let the caller count the drop.
            self.lens[i] = if self.msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                self.msgs[i].msg_len as usize
            };
            if self.controls.is_some() {
                self.stamps[i] = timestamp(&self.msgs[i].msg_hdr);
            }
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut n = 0;
        while n < BATCH {
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.syscalls += 1;
            // SAFETY: buffer and address storage are owned by self and sized as declared.
            let r = unsafe {
                libc::recvfrom(
                    fd,
                    self.bufs[n].as_mut_ptr().cast(),
                    BUF_SIZE,
                    libc::MSG_DONTWAIT,
                    (&mut self.addrs[n] as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(n),
                    _ if n > 0 => Ok(n),
                    _ => Err(err),
                };
            }
            self.lens[n] = r as usize;
            n += 1;
        }
        Ok(n)
    }

    /// Datagram `i` of the last `recv`: its buffer (full capacity, for in-place growth), its
    /// length and its source. `None` source for an address family we don't speak.
    pub fn get(&mut self, i: usize) -> (&mut [u8; BUF_SIZE], usize, Option<SocketAddr>) {
        let from = sockaddr_to_std(&self.addrs[i]);
        (&mut self.bufs[i], self.lens[i], from)
    }
}

/// The `SCM_TIMESTAMPNS` in a received message's control data, in µs since the Unix epoch.
#[cfg(target_os = "linux")]
fn timestamp(hdr: &libc::msghdr) -> Option<u64> {
    // SAFETY: the kernel filled msg_control up to msg_controllen; CMSG_* walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let us = (ts.tv_sec as u64)
                    .checked_mul(1_000_000)?
                    .checked_add(ts.tv_nsec as u64 / 1000)?;
                return Some(us);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// A queue of outbound datagrams for one shard, flushed with `sendmmsg` per run of datagrams
/// on the same socket.
pub struct SendBatch {
    bufs: Box<[[u8; BUF_SIZE]]>,
    lens: [usize; BATCH],
    fds: [RawFd; BATCH],
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: [libc::socklen_t; BATCH],
    len: usize,
    #[cfg(target_os = "linux")]
    iovecs: Box<[libc::iovec]>,
    #[cfg(target_os = "linux")]
    msgs: Box<[libc::mmsghdr]>,
    /// Datagrams the kernel refused (buffer full, unreachable): counted, never retried.
    pub send_errors: u64,
    pub sent: u64,
    /// `sendmmsg` calls made.
    pub syscalls: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        // SAFETY: as in RecvBatch::new.
        let zeroed_addr: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        SendBatch {
            bufs: vec![[0u8; BUF_SIZE]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            fds: [-1; BATCH],
            addrs: vec![zeroed_addr; BATCH].into_boxed_slice(),
            addr_lens: [0; BATCH],
            len: 0,
            #[cfg(target_os = "linux")]
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ]
            .into_boxed_slice(),
            #[cfg(target_os = "linux")]
            msgs: (0..BATCH)
                .map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() })
                .collect(),
            send_errors: 0,
            sent: 0,
            syscalls: 0,
        }
    }

    /// Queue a copy of `data` for `fd` → `to`; flushes first when the batch is full.
    pub fn push(&mut self, fd: RawFd, to: SocketAddr, data: &[u8]) {
        self.queue(fd, Some(to), data);
    }

    /// Queue a copy of `data` for the connected socket `fd`, without an address (the
    /// kernel sends it to the socket's peer, with no route lookup).
    pub fn push_connected(&mut self, fd: RawFd, data: &[u8]) {
        self.queue(fd, None, data);
    }

    fn queue(&mut self, fd: RawFd, to: Option<SocketAddr>, data: &[u8]) {
        if data.len() > BUF_SIZE {
            self.send_errors += 1;
            return;
        }
        if self.len == BATCH {
            self.flush();
        }
        let i = self.len;
        self.bufs[i][..data.len()].copy_from_slice(data);
        self.lens[i] = data.len();
        self.fds[i] = fd;
        // Length 0: no address in the header (flush passes a null name).
        self.addr_lens[i] = to.map_or(0, |to| std_to_sockaddr(to, &mut self.addrs[i]));
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Send everything queued. Consecutive datagrams on one socket go in one `sendmmsg`.
    pub fn flush(&mut self) {
        let mut start = 0;
        while start < self.len {
            let fd = self.fds[start];
            let mut end = start + 1;
            while end < self.len && self.fds[end] == fd {
                end += 1;
            }
            self.send_run(fd, start, end);
            start = end;
        }
        self.len = 0;
    }

    #[cfg(target_os = "linux")]
    fn send_run(&mut self, fd: RawFd, start: usize, end: usize) {
        for i in start..end {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            // No address (length 0): a connected socket's datagram to its peer.
            hdr.msg_name = if self.addr_lens[i] == 0 {
                std::ptr::null_mut()
            } else {
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast()
            };
            hdr.msg_namelen = self.addr_lens[i];
            hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        let mut at = start;
        while at < end {
            self.syscalls += 1;
            // SAFETY: messages start..end point at live buffers owned by self.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[at..].as_mut_ptr(),
                    (end - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Skip the datagram that failed and carry on with the rest.
                self.send_errors += 1;
                at += 1;
            } else {
                self.sent += n as u64;
                at += n as usize;
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_run(&mut self, fd: RawFd, start: usize, end: usize) {
        for i in start..end {
            self.syscalls += 1;
            // SAFETY: buffer and address owned by self, sized as declared.
            let r = unsafe {
                libc::sendto(
                    fd,
                    self.bufs[i].as_ptr().cast(),
                    self.lens[i],
                    0,
                    if self.addr_lens[i] == 0 {
                        std::ptr::null()
                    } else {
                        (&self.addrs[i] as *const libc::sockaddr_storage).cast()
                    },
                    self.addr_lens[i],
                )
            };
            if r < 0 {
                self.send_errors += 1;
            } else {
                self.sent += 1;
            }
        }
    }
}

/// The source address the kernel wrote into `ss`; `None` for a family we don't speak.
/// Does the socket's receive queue hold a datagram (`FIONREAD`, which for UDP is the size of
/// the next one)? One system call: asked when a call's silence fill is due, not per packet.
/// An error (a closed descriptor) reads as empty.
pub(crate) fn has_queued(fd: RawFd) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to a live local.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    r == 0 && n > 0
}

pub fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(crate) fn std_to_sockaddr(
    addr: SocketAddr,
    ss: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_timestamped_batch_reads_kernel_arrival_times() {
        let unix_us = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_timestamps(rx.as_raw_fd());
        let before = unix_us();
        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = RecvBatch::with_timestamps();
        let mut got = 0;
        for _ in 0..100 {
            got = b.recv(rx.as_raw_fd()).unwrap();
            if got > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(got > 0);
        let stamp = b.timestamp_us(0).expect("kernel timestamp");
        assert!(stamp >= before && stamp <= unix_us());
        let (_, len, from) = b.get(0);
        assert_eq!((len, from), (10, Some(tx.local_addr().unwrap())));
        // The engine's own batch asks for no ancillary data.
        let mut plain = RecvBatch::new();
        tx.send_to(&[9; 10], rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        while plain.recv(rx.as_raw_fd()).unwrap() > 0 {}
        assert_eq!(plain.timestamp_us(0), None);
    }

    #[test]
    fn batch_round_trip_v4_and_v6() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(a) = UdpSocket::bind(bind) else {
                continue; // IPv6 disabled on this host
            };
            let b = UdpSocket::bind(bind).unwrap();
            b.set_nonblocking(true).unwrap();
            let mut tx = SendBatch::new();
            for i in 0..40u8 {
                tx.push(a.as_raw_fd(), b.local_addr().unwrap(), &[i; 100]);
            }
            tx.flush();
            assert_eq!(tx.sent, 40);
            let mut rx = RecvBatch::new();
            let mut got = 0;
            for _ in 0..100 {
                let n = rx.recv(b.as_raw_fd()).unwrap();
                for i in 0..n {
                    let (buf, len, from) = rx.get(i);
                    assert_eq!(len, 100);
                    assert_eq!(buf[0] as usize, got);
                    assert_eq!(from, Some(a.local_addr().unwrap()));
                    got += 1;
                }
                if got == 40 {
                    break;
                }
                std::thread::yield_now();
            }
            assert_eq!(got, 40);
        }
    }
}
