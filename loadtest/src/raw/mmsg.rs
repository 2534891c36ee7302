//! One batch of datagrams forwarded in place: `recvmmsg` into 32 buffers, then `sendmmsg` of
//! the same buffers to the destinations the caller chose, no copy in between. It counts its own
//! system calls (including the `recvmmsg` that finds the socket empty), which is what
//! `compare`'s "syscalls per packet" reports for the forwarders. No allocation after `new`.
//!
//! For the levers measured in BENCHMARKS.md (issue 17): `recv_append` gathers datagrams of
//! several sockets into one batch (for one `sendmmsg` on a shared socket), `with_control`
//! asks for ancillary data (`UDP_GRO` segment sizes, `IP_ORIGDSTADDR`), and `counting` tallies
//! what GRO and GSO could merge: datagrams that follow one of the same flow in one receive, and
//! datagrams queued to the same destination as the one before them in one send.

#![allow(unsafe_code)] // the I/O system calls; each block says why it is sound

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};

pub const BATCH: usize = 32;
const BUF: usize = 2048;
/// Ancillary data room per message (one `UDP_GRO` int and one `sockaddr_in`, with headers).
const CONTROL: usize = 64;
/// `UDP_SEGMENT` / `UDP_GRO` (linux/udp.h; not in the libc crate).
pub const UDP_GRO: libc::c_int = 104;

/// What a batch saw, when counting (`ForwardBatch::counting`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams received.
    pub received: u64,
    /// Receives that returned at least one datagram.
    pub receives: u64,
    /// Datagrams from the same source as the one before them in the same receive: what GRO
    /// could have merged at best (it merges only consecutive datagrams of one flow).
    pub same_flow_received: u64,
    /// Datagrams that arrived with a `UDP_GRO` control message saying they hold more than one
    /// segment, and the segments in them (such a datagram is dropped, counted here: the
    /// forwarder sends one datagram per buffer).
    pub gro_merged: u64,
    pub gro_segments: u64,
    /// Datagrams queued for sending.
    pub sent: u64,
    /// Send calls (`sendmmsg`) that carried at least one datagram.
    pub sends: u64,
    /// Datagrams queued to the same destination as the one before them in the same send: what
    /// one `UDP_SEGMENT` (GSO) send could have carried together.
    pub same_dest_sent: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.receives += o.receives;
        self.same_flow_received += o.same_flow_received;
        self.gro_merged += o.gro_merged;
        self.gro_segments += o.gro_segments;
        self.sent += o.sent;
        self.sends += o.sends;
        self.same_dest_sent += o.same_dest_sent;
    }
}

pub struct ForwardBatch {
    bufs: Box<[[u8; BUF]]>,
    /// Sources of the datagrams received, as the kernel wrote them.
    from: Box<[libc::sockaddr_storage]>,
    /// Destinations of the datagrams to send (index into `bufs`).
    to: Box<[SockAddr]>,
    lens: [usize; BATCH],
    recv_iov: Box<[libc::iovec]>,
    recv_msgs: Box<[libc::mmsghdr]>,
    send_iov: Box<[libc::iovec]>,
    send_msgs: Box<[libc::mmsghdr]>,
    /// Ancillary data buffers, one per message (`with_control`), u64 for the alignment
    /// `cmsghdr` needs.
    control: Option<Box<[[u64; CONTROL / 8]]>>,
    /// Per received datagram: segments it holds by its `UDP_GRO` message (1 without one), and
    /// the local port it was sent to by its `IP_ORIGDSTADDR` message (0 without one).
    segments: [u16; BATCH],
    orig_port: [u16; BATCH],
    /// Datagrams received since the last `send` (or `recv`).
    received: usize,
    /// Datagrams queued for the next `send`.
    queued: usize,
    /// The destination of the last datagram queued (counting).
    last_to: Option<SocketAddr>,
    /// Tally what GRO/GSO could merge (off by default: it costs a comparison a datagram).
    pub counting: bool,
    pub counts: Counts,
    /// System calls made (recvmmsg + sendmmsg).
    pub syscalls: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
}

// SAFETY: the raw pointers in the iovecs and headers point only into buffers this struct owns
// and are rewritten before every system call.
unsafe impl Send for ForwardBatch {}

/// `setsockopt(fd, level, name, &v)` of an int; false if the kernel refused it.
pub fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: a c_int option value of the declared size; an invalid fd only fails.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structs, for which all-zero is a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

impl Default for ForwardBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl ForwardBatch {
    pub fn new() -> Self {
        let iov = || {
            vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ]
            .into_boxed_slice()
        };
        ForwardBatch {
            bufs: vec![[0u8; BUF]; BATCH].into_boxed_slice(),
            from: (0..BATCH).map(|_| zeroed()).collect(),
            to: (0..BATCH)
                .map(|_| SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))))
                .collect(),
            lens: [0; BATCH],
            recv_iov: iov(),
            recv_msgs: (0..BATCH).map(|_| zeroed()).collect(),
            send_iov: iov(),
            send_msgs: (0..BATCH).map(|_| zeroed()).collect(),
            control: None,
            segments: [1; BATCH],
            orig_port: [0; BATCH],
            received: 0,
            queued: 0,
            last_to: None,
            counting: false,
            counts: Counts::default(),
            syscalls: 0,
            send_errors: 0,
        }
    }

    /// A batch that receives ancillary data (`UDP_GRO` segment sizes, `IP_ORIGDSTADDR`) with
    /// every datagram; the sockets must have asked for it (`setsockopt`).
    pub fn with_control() -> Self {
        let mut b = Self::new();
        b.control = Some(vec![[0u64; CONTROL / 8]; BATCH].into_boxed_slice());
        b
    }

    /// Receives up to [`BATCH`] datagrams without blocking; 0 when the socket is empty.
    /// Anything queued and not sent is dropped.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.queued = 0;
        self.received = 0;
        self.last_to = None;
        self.recv_append(fd)
    }

    /// Receives into the room left after the datagrams already received (and not yet sent),
    /// without blocking: datagrams of several sockets gather in one batch for one `send` on a
    /// shared socket. Returns how many arrived (0 when the socket is empty or there is no room).
    pub fn recv_append(&mut self, fd: RawFd) -> io::Result<usize> {
        let first = self.received;
        if first >= BATCH {
            return Ok(0);
        }
        for i in first..BATCH {
            self.recv_iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF,
            };
            let h = &mut self.recv_msgs[i].msg_hdr;
            h.msg_name = (&mut self.from[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.recv_iov[i];
            h.msg_iovlen = 1;
            match &mut self.control {
                Some(c) => {
                    h.msg_control = c[i].as_mut_ptr().cast();
                    h.msg_controllen = CONTROL as _;
                }
                None => {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
            }
            h.msg_flags = 0;
        }
        self.syscalls += 1;
        // SAFETY: every header from `first` on points at live buffers owned by self, sized as
        // declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_msgs[first..].as_mut_ptr(),
                (BATCH - first) as libc::c_uint,
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
        self.received = first + n;
        for i in first..self.received {
            self.lens[i] = self.recv_msgs[i].msg_len as usize;
            self.segments[i] = 1;
            self.orig_port[i] = 0;
            if self.control.is_some() {
                self.read_control(i);
            }
        }
        if self.counting && n > 0 {
            self.counts.received += n as u64;
            self.counts.receives += 1;
            for i in first + 1..self.received {
                // One flow: same source and (steered) same local port.
                if self.source(i).is_some()
                    && self.source(i) == self.source(i - 1)
                    && self.orig_port[i] == self.orig_port[i - 1]
                {
                    self.counts.same_flow_received += 1;
                }
            }
            for i in first..self.received {
                if self.segments[i] > 1 {
                    self.counts.gro_merged += 1;
                    self.counts.gro_segments += u64::from(self.segments[i]);
                }
            }
        }
        Ok(n)
    }

    /// Reads datagram `i`'s control messages into `segments` and `orig_port`.
    fn read_control(&mut self, i: usize) {
        let h = &self.recv_msgs[i].msg_hdr;
        // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed cmsg headers into the
        // buffer `msg_control` points at (ours, CONTROL bytes, 8-aligned); the CMSG macros stay
        // within `msg_controllen`, and every read is unaligned-safe.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                let data = libc::CMSG_DATA(c);
                if level == libc::SOL_UDP && kind == UDP_GRO {
                    let gso = data.cast::<libc::c_int>().read_unaligned();
                    if gso > 0 {
                        let segs = self.lens[i].div_ceil(gso as usize);
                        self.segments[i] = u16::try_from(segs).unwrap_or(u16::MAX);
                    }
                } else if level == libc::SOL_IP && kind == libc::IP_ORIGDSTADDR {
                    let sin = data.cast::<libc::sockaddr_in>().read_unaligned();
                    self.orig_port[i] = u16::from_be(sin.sin_port);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
    }

    /// The local port received datagram `i` was sent to, from its `IP_ORIGDSTADDR` control
    /// message (`None` without one).
    pub fn orig_port(&self, i: usize) -> Option<u16> {
        (i < self.received && self.orig_port[i] != 0).then(|| self.orig_port[i])
    }

    /// The source of received datagram `i`; `None` past those received or for a family other
    /// than IP.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        let from = self.from.get(..self.received)?.get(i)?;
        let len = self.recv_msgs[i].msg_hdr.msg_namelen;
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: sockaddr_storage is one of this platform's sockaddr types (view_as checks
        // the size); `from` is a plain copy of what the kernel wrote.
        unsafe { *storage.view_as::<libc::sockaddr_storage>() = *from };
        // SAFETY: the storage is wholly initialised (zeroed, then the kernel's bytes) and
        // `len`, the length the kernel wrote, is within it.
        unsafe { SockAddr::new(storage, len) }.as_socket()
    }

    /// Queues received datagram `i` for `to` (a datagram GRO merged from several is dropped,
    /// counted in `Counts::gro_merged`).
    pub fn forward(&mut self, i: usize, to: SocketAddr) {
        if i >= self.received || self.segments[i] > 1 {
            return;
        }
        if self.counting {
            self.counts.sent += 1;
            if self.last_to == Some(to) {
                self.counts.same_dest_sent += 1;
            }
            self.last_to = Some(to);
        }
        let q = self.queued;
        self.to[i] = SockAddr::from(to);
        self.send_iov[q] = libc::iovec {
            iov_base: self.bufs[i].as_mut_ptr().cast(),
            iov_len: self.lens[i],
        };
        let h = &mut self.send_msgs[q].msg_hdr;
        // sendmmsg only reads the name; the pointer is mutable in the C struct's type alone.
        h.msg_name = self.to[i].as_ptr().cast_mut().cast();
        h.msg_namelen = self.to[i].len();
        h.msg_iov = &mut self.send_iov[q];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        self.queued += 1;
    }

    /// Sends everything queued from `fd` with as few `sendmmsg` calls as the kernel allows.
    /// The datagrams received stay (another can be queued and sent, to another socket) until
    /// the next `recv` or `clear`.
    pub fn send(&mut self, fd: RawFd) {
        if self.counting && self.queued > 0 {
            self.counts.sends += 1;
        }
        self.last_to = None;
        let mut at = 0;
        while at < self.queued {
            self.syscalls += 1;
            // SAFETY: headers at..queued point at live buffers owned by self.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_msgs[at..].as_mut_ptr(),
                    (self.queued - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Skip the datagram that failed and carry on with the rest.
                self.send_errors += 1;
                at += 1;
            } else {
                at += n as usize;
            }
        }
        self.queued = 0;
    }

    /// Forgets the datagrams received (after a `send`), so `recv_append` starts at the front.
    pub fn clear(&mut self) {
        self.queued = 0;
        self.received = 0;
        self.last_to = None;
    }

    /// Datagrams received and not yet cleared.
    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn forwards_a_batch_in_place_and_counts_its_system_calls() {
        let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
        fwd.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for k in 0..3u8 {
            a.send_to(&[k; 5], fwd.local_addr().unwrap()).unwrap();
        }
        let mut batch = ForwardBatch::new();
        let mut got = 0;
        while got < 3 {
            let n = batch.recv(fwd.as_raw_fd()).unwrap();
            for i in 0..n {
                assert_eq!(batch.source(i), Some(a.local_addr().unwrap()));
                batch.forward(i, b.local_addr().unwrap());
            }
            batch.send(fwd.as_raw_fd());
            got += n;
        }
        let mut buf = [0u8; 16];
        for k in 0..3u8 {
            let (n, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&[k; 5][..], fwd.local_addr().unwrap()));
        }
        assert!(batch.syscalls >= 2, "{}", batch.syscalls);
        assert_eq!(batch.recv(fwd.as_raw_fd()).unwrap(), 0);
        assert_eq!(batch.send_errors, 0);
    }

    /// The counts: datagrams of one flow back to back in a receive, to one destination back to
    /// back in a send.
    #[test]
    fn counts_what_gro_and_gso_could_merge() {
        let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
        fwd.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for k in 0..3u8 {
            a.send_to(&[k; 5], fwd.local_addr().unwrap()).unwrap();
        }
        b.send_to(&[9; 5], fwd.local_addr().unwrap()).unwrap();
        let mut batch = ForwardBatch::new();
        batch.counting = true;
        std::thread::sleep(std::time::Duration::from_millis(10));
        let n = batch.recv(fwd.as_raw_fd()).unwrap();
        assert_eq!(n, 4);
        for i in 0..n {
            batch.forward(i, b.local_addr().unwrap());
        }
        batch.send(fwd.as_raw_fd());
        let c = batch.counts;
        assert_eq!(
            (c.received, c.receives, c.same_flow_received),
            (4, 1, 2),
            "{c:?}"
        );
        assert_eq!((c.sent, c.sends, c.same_dest_sent), (4, 1, 3), "{c:?}");
        assert_eq!(c.gro_merged, 0);
    }

    /// With `UDP_GRO` on, a datagram sent with `UDP_SEGMENT` (GSO) arrives merged on
    /// loopback, and the batch reads its segment count from the control message (so a count of
    /// 0 in a benchmark means nothing merged, not that the count is blind). It is dropped, not
    /// forwarded as one large datagram.
    #[test]
    fn reads_gro_segment_counts() {
        const UDP_SEGMENT: libc::c_int = 103;
        let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
        fwd.set_nonblocking(true).unwrap();
        assert!(set_int_option(fwd.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1));
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !set_int_option(a.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, 100) {
            eprintln!("skipped: no UDP_SEGMENT here");
            return;
        }
        a.send_to(&[7u8; 300], fwd.local_addr().unwrap()).unwrap();
        let mut batch = ForwardBatch::with_control();
        batch.counting = true;
        std::thread::sleep(std::time::Duration::from_millis(10));
        let n = batch.recv(fwd.as_raw_fd()).unwrap();
        assert_eq!(n, 1);
        assert_eq!(batch.lens[0], 300);
        assert_eq!((batch.counts.gro_merged, batch.counts.gro_segments), (1, 3));
        batch.forward(0, a.local_addr().unwrap());
        batch.send(fwd.as_raw_fd());
        assert_eq!(batch.counts.sent, 0);
    }
}
