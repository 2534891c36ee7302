//! Shards: one OS thread per core owning its sockets, calls and timers.
