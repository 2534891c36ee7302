//! `loadtest`: drives a relay with many simulated WhatsApp calls and measures what an operator
//! needs before trusting it: loss and one-way latency per direction, jitter, setup time, the
//! relay's CPU and memory per call, and the generator's own CPU (to show it was not the
//! bottleneck).
//!
//! Layout, top down:
//! - [`session`]: the signaling tier (gRPC: CreateCall → answer → OpenGate → Terminate) and the
//!   modes (run, ramp, churn, capacity, overload), one file each.
//! - [`generator`]: generator threads, each a mio poll loop over nonblocking sockets with
//!   `recvmmsg`/`sendmmsg`, running many calls' [`peer`]s.
//! - [`sampler`], [`stats`], [`hist`], [`procfs`]: measurement; [`syscalls`] and [`scrape`]:
//!   a target's system calls and the relay's own counters; [`report`]: table, JSON, HTML, and
//!   each mode's report type.
//! - [`target`]: start a relay process (or reach a running one); [`raw`]: the trivial
//!   forwarders (a socket per call and leg, or one socket) that give the machine's ceiling; [`target_rtpengine`] (with [`bencode`]):
//!   start rtpengine and drive it over its ng protocol, for a side-by-side comparison.
//! - [`call`]: one call through a running relay, explained (`loadtest call`).
//! - [`cli`]: the command line, one file per mode (the binary is a thin wrapper).

#![deny(unsafe_code)] // except os.rs, the batch and timer I/O (raw/mmsg.rs, generator/timerfd.rs) and raw/bpf.rs

pub mod bencode;
pub mod call;
pub mod cli;
pub mod generator;
pub mod hist;
pub mod os;
pub mod peer;
pub mod procfs;
pub mod raw;
pub mod report;
pub mod sampler;
pub mod scrape;
pub mod session;
pub mod stats;
pub mod syscalls;
pub mod target;
pub mod target_rtpengine;
