//! Voice-bot legs: the internal leg is a bot behind a WebSocket (Twilio Media Streams
//! framing, μ-law 8 kHz, or raw 16-bit PCM at 16 kHz) instead of an RTP peer.
//!
//! - [`protocol`]: the messages, sans-IO.
//! - [`link`]: the lock-free queues between the call on its shard and the WebSocket task, and
//!   why this leg (alone) crosses threads.
//! - [`playout`]: the bot's audio toward WhatsApp on a 20 ms clock, marks and clear.

pub mod link;
pub mod playout;
pub mod protocol;
