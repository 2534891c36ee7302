//! Meta emulator and internal peers.
