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
