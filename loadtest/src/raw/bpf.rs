//! An eBPF `sk_lookup` program that steers every UDP datagram addressed to a local port in a
//! range to one socket, loaded with the raw `bpf()` system call (no libbpf, no clang: the
//! program is 22 instructions written out below). For `raw-steered` (issue 17's fourth
//! lever): one receive socket for the ports of every call and leg, the local port recovered
//! per datagram from `IP_ORIGDSTADDR`.
//!
//! The program is attached to the calling thread's network namespace; [`Steering::attach`]
//! refuses the initial one (PID 1's, or any with an interface besides loopback), because
//! steering ports there would take other programs' traffic: run the load test in its own
//! (`unshare -n`). Dropping the [`Steering`]
//! closes the link, which detaches the program.

#![allow(unsafe_code)] // the bpf() system call; each block says why it is sound

use std::ffi::CString;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Helpers (uapi/linux/bpf.h).
const MAP_LOOKUP_ELEM: i32 = 1;
const SK_RELEASE: i32 = 86;
const SK_ASSIGN: i32 = 124;
/// `struct bpf_sk_lookup` offsets.
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_PORT: i16 = 60;

/// The attribute union of `bpf()`: zeroed, 8-aligned, larger than any command below uses
/// (the kernel accepts a larger size whose tail is zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(mut self, at: usize, v: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, at: usize, v: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

/// `bpf(cmd, attr)`: the file descriptor or value it returns.
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, zero-padded buffer of the size passed; every pointer stored in
    // it (by the callers) points at memory that outlives this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bpf() returned no fd"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `struct bpf_insn`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0xf) | (src << 4),
        off,
        imm,
    }
}

/// The program: UDP to a local port in `lo..=hi` goes to the socket at key 0 of `map`;
/// anything else takes the normal lookup.
///
/// ```text
///  0  r6 = r1                        ctx
///  1  r2 = *(u32 *)(r6 + 12)         protocol
///  2  if r2 != 17 goto pass
///  3  r2 = *(u32 *)(r6 + 60)         local_port (host order)
///  4  if r2 < lo goto pass
///  5  if r2 > hi goto pass
///  6  *(u32 *)(r10 - 4) = 0          key
///  7  r1 = map (2 slots)
///  9  r2 = r10
/// 10  r2 += -4
/// 11  call map_lookup_elem
/// 12  if r0 == 0 goto pass
/// 13  r7 = r0
/// 14  r1 = r6
/// 15  r2 = r7
/// 16  r3 = 0
/// 17  call sk_assign
/// 18  r1 = r7
/// 19  call sk_release
/// 20  pass: r0 = 1                   SK_PASS (with the socket assigned, if it was)
/// 21  exit
/// ```
fn program(map: RawFd, lo: u16, hi: u16) -> [Insn; 22] {
    const MOV64_X: u8 = 0xbf;
    const MOV64_K: u8 = 0xb7;
    const LDX_W: u8 = 0x61;
    const ST_W: u8 = 0x62;
    const ADD64_K: u8 = 0x07;
    const JNE_K: u8 = 0x55;
    const JLT_K: u8 = 0xa5;
    const JGT_K: u8 = 0x25;
    const JEQ_K: u8 = 0x15;
    const LD_DW: u8 = 0x18;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const PASS: i16 = 20;
    // A jump at `pc` to `PASS`: offsets count from the next instruction.
    let to_pass = |pc: i16| PASS - pc - 1;
    [
        insn(MOV64_X, 6, 1, 0, 0),
        insn(LDX_W, 2, 6, CTX_PROTOCOL, 0),
        insn(JNE_K, 2, 0, to_pass(2), libc::IPPROTO_UDP),
        insn(LDX_W, 2, 6, CTX_LOCAL_PORT, 0),
        insn(JLT_K, 2, 0, to_pass(4), i32::from(lo)),
        insn(JGT_K, 2, 0, to_pass(5), i32::from(hi)),
        insn(ST_W, 10, 0, -4, 0),
        insn(LD_DW, 1, BPF_PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_X, 2, 10, 0, 0),
        insn(ADD64_K, 2, 0, 0, -4),
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        insn(JEQ_K, 0, 0, to_pass(12), 0),
        insn(MOV64_X, 7, 0, 0, 0),
        insn(MOV64_X, 1, 6, 0, 0),
        insn(MOV64_X, 2, 7, 0, 0),
        insn(MOV64_K, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, SK_ASSIGN),
        insn(MOV64_X, 1, 7, 0, 0),
        insn(CALL, 0, 0, 0, SK_RELEASE),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The steering while it lives: the program attached to this network namespace.
#[derive(Debug)]
pub struct Steering {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// Whether the calling thread's network namespace may be someone else's too: PID 1's (when
/// /proc lets us compare), or one with an interface besides loopback.
pub fn in_initial_netns() -> io::Result<bool> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    // Unreadable from a namespace made by a thread's unshare; the interfaces still tell.
    if let Ok(init) = std::fs::metadata("/proc/1/ns/net")
        && own.ino() == init.ino()
        && own.dev() == init.dev()
    {
        return Ok(true);
    }
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    Ok(dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .any(|name| name.trim() != "lo"))
}

impl Steering {
    /// Steers UDP datagrams to local ports `lo..=hi` (any local address) to `to`, in the
    /// calling thread's network namespace.
    pub fn attach(to: &UdpSocket, lo: u16, hi: u16) -> io::Result<Steering> {
        if in_initial_netns()? {
            return Err(io::Error::other(
                "raw-steered attaches an sk_lookup program to the network namespace, which would \
                 take other programs' traffic to its ports: run loadtest in a namespace of its \
                 own, e.g. `unshare -n sh -c 'ip link set lo up && exec loadtest ...'`",
            ));
        }
        let mut a = Attr::new()
            .u32(0, BPF_MAP_TYPE_SOCKMAP)
            .u32(4, 4)
            .u32(8, 8)
            .u32(12, 1);
        let step = |what: &'static str| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut a).map_err(step("creating the sockmap"))?)?;
        let key = 0u32;
        let value = to.as_raw_fd() as u64;
        let mut a = Attr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &value as *const u64 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map_err(step("putting the socket in the sockmap"))?;

        let insns = program(map.as_raw_fd(), lo, hi);
        let license = CString::new("GPL").map_err(io::Error::other)?;
        let mut log = vec![0u8; 64 << 10];
        let load = |log_level: u32, log: &mut Vec<u8>| {
            let mut a = Attr::new()
                .u32(0, BPF_PROG_TYPE_SK_LOOKUP)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, log_level)
                .u32(28, if log_level > 0 { log.len() as u32 } else { 0 })
                .u64(
                    32,
                    if log_level > 0 {
                        log.as_mut_ptr() as u64
                    } else {
                        0
                    },
                )
                .u32(68, BPF_SK_LOOKUP);
            bpf(BPF_PROG_LOAD, &mut a)
        };
        let prog = match load(0, &mut log) {
            Ok(fd) => owned(fd)?,
            Err(e) => {
                // Again with the verifier's log, to say why.
                let _ = load(1, &mut log);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                return Err(io::Error::other(format!(
                    "loading the sk_lookup program: {e}; verifier: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                )));
            }
        };
        let netns = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(step("opening /proc/thread-self/ns/net"))?;
        let mut a = Attr::new()
            .u32(0, prog.as_raw_fd() as u32)
            .u32(4, netns.as_raw_fd() as u32)
            .u32(8, BPF_SK_LOOKUP);
        let link = owned(
            bpf(BPF_LINK_CREATE, &mut a).map_err(step("attaching to the network namespace"))?,
        )?;
        Ok(Steering {
            _map: map,
            _prog: prog,
            _link: link,
        })
    }
}

/// Moves the calling thread into a new network namespace with its loopback up (root only);
/// threads it starts afterwards inherit it. For tests of the steering.
pub fn private_netns_for_this_thread() -> io::Result<()> {
    // SAFETY: unshare with a flag only affects the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Binding to the wildcard address needs no interface up.
    let s = UdpSocket::bind("0.0.0.0:0")?;
    lo_up(s.as_raw_fd())
}

/// `ifconfig lo up` through `SIOCSIFFLAGS` on a datagram socket.
fn lo_up(fd: RawFd) -> io::Result<()> {
    // SAFETY: ifreq is plain data; the name fits its 16 bytes with the NUL; the ioctls read
    // and write only the ifreq passed.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
