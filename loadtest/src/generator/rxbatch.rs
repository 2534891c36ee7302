//! `recvmmsg` with kernel receive timestamps (`SO_TIMESTAMPNS`): each datagram's arrival time
//! as the kernel saw it, so one-way latency does not include how long the generator took to
//! get round to reading it. No allocation after construction.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use relay::engine::udp::{BATCH, BUF_SIZE, sockaddr_to_std};
/// Room for one SCM_TIMESTAMPNS control message (CMSG_SPACE of a timespec is 32 on 64-bit).
const CONTROL: usize = 64;

/// Asks the kernel to timestamp datagrams arriving on `fd` (best effort).
pub fn enable_timestamps(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: valid fd, c_int option of the declared size.
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

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL]);

pub struct RecvBatch {
    bufs: Box<[[u8; BUF_SIZE]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    controls: Box<[Control]>,
    lens: [usize; BATCH],
    stamps: [Option<u64>; BATCH],
    iovecs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in iovecs/msgs point only into buffers owned by the struct and are
// rewritten before every syscall.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed_addr: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        RecvBatch {
            bufs: vec![[0u8; BUF_SIZE]; BATCH].into_boxed_slice(),
            addrs: vec![zeroed_addr; BATCH].into_boxed_slice(),
            controls: vec![Control([0; CONTROL]); BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            stamps: [None; BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ]
            .into_boxed_slice(),
            msgs: (0..BATCH)
                // SAFETY: as above.
                .map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() })
                .collect(),
        }
    }

    /// Up to [`BATCH`] datagrams without blocking; `Ok(0)` when drained.
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
            hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = CONTROL as _;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
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
        for i in 0..n.min(BATCH) {
            let hdr = &self.msgs[i].msg_hdr;
            self.lens[i] = if hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                self.msgs[i].msg_len as usize
            };
            self.stamps[i] = timestamp(hdr);
        }
        Ok(n)
    }

    /// Datagram `i`: buffer, length, source, kernel arrival time (µs since the Unix epoch).
    pub fn get(&mut self, i: usize) -> Option<(&mut [u8], Option<SocketAddr>, Option<u64>)> {
        let len = *self.lens.get(i)?;
        let from = sockaddr_to_std(self.addrs.get(i)?);
        let stamp = *self.stamps.get(i)?;
        let buf = self.bufs.get_mut(i)?.get_mut(..len)?;
        Some((buf, from, stamp))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn receives_a_batch_with_kernel_timestamps() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_timestamps(rx.as_raw_fd());
        let before = e2e::rtp::unix_micros();
        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = RecvBatch::new();
        let mut got = 0;
        for _ in 0..100 {
            got += b.recv(rx.as_raw_fd()).unwrap();
            if got == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 3);
        let (buf, from, stamp) = b.get(0).unwrap();
        assert_eq!(buf.len(), 10);
        assert_eq!(from, Some(tx.local_addr().unwrap()));
        let stamp = stamp.expect("kernel timestamp");
        assert!(stamp >= before && stamp <= e2e::rtp::unix_micros());
    }
}
