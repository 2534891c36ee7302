//! The call state machine: both legs, the media gate, rewriting, timers, statistics.
