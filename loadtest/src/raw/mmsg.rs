//! One batch of datagrams forwarded in place: `recvmmsg` into 32 buffers, then `sendmmsg` of
//! the same buffers to the destinations the caller chose, no copy in between. It counts its own
//! system calls (including the `recvmmsg` that finds the socket empty), which is what
//! `compare`'s "syscalls per packet" reports for the forwarders. No allocation after `new`.

#![allow(unsafe_code)] // the I/O system calls; each block says why it is sound

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};

pub const BATCH: usize = 32;
const BUF: usize = 2048;

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
    /// Datagrams received in the last `recv`.
    received: usize,
    /// Datagrams queued for the next `send`.
    queued: usize,
    /// System calls made (recvmmsg + sendmmsg).
    pub syscalls: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
}

// SAFETY: the raw pointers in the iovecs and headers point only into buffers this struct owns
// and are rewritten before every system call.
unsafe impl Send for ForwardBatch {}

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
            received: 0,
            queued: 0,
            syscalls: 0,
            send_errors: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; 0 when the socket is empty.
    /// Anything queued and not sent is dropped.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.queued = 0;
        self.received = 0;
        for i in 0..BATCH {
            self.recv_iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF,
            };
            let h = &mut self.recv_msgs[i].msg_hdr;
            h.msg_name = (&mut self.from[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.recv_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        self.syscalls += 1;
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_msgs.as_mut_ptr(),
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
        self.received = n as usize;
        for i in 0..self.received {
            self.lens[i] = self.recv_msgs[i].msg_len as usize;
        }
        Ok(self.received)
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

    /// Queues received datagram `i` for `to`.
    pub fn forward(&mut self, i: usize, to: SocketAddr) {
        if i >= self.received {
            return;
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
    pub fn send(&mut self, fd: RawFd) {
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
}
