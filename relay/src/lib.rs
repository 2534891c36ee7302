//! `relay`: the media tier for WhatsApp Business Calling.
//!
//! Three layers, each usable on its own:
//! 1. [`wire`], [`srtp`], [`sdp`]: pure wire formats. Parse from `&[u8]`/`&str`, write into
//!    caller-provided buffers, never panic, never allocate on the packet path.
//! 2. [`ice`], [`dtls`], [`call`]: sans-IO state machines. Input is a datagram or a command plus
//!    `now`; output is datagrams pushed into an [`net::Outbox`], events, and the next deadline.
//! 3. [`engine`]: shards (one OS thread per core) that own sockets and calls and run to completion.
//!
//! [`api`] is the boundary the control plane ([`control`]) drives.

// Unsafe code lives only where the relay meets the kernel or C: the engine's I/O drivers
// (engine::{driver, uring, udp}), the voice-bot link's eventfd doorbell (bot::{link, client}),
// libopus's FFI (codec::opus) and sysconf (ops::process). Each block there carries a SAFETY
// comment; everything else (wire formats, SRTP, SDP, ICE, DTLS, the call) is safe Rust.
#![deny(unsafe_code)]

pub mod api;
pub mod bot;
pub mod call;
pub mod codec;
pub mod config;
pub mod control;
pub mod dtls;
pub mod engine;
pub mod ice;
pub mod listen;
pub mod net;
pub mod ops;
pub mod record;
pub mod sdp;
pub mod srtp;
pub mod wire;
