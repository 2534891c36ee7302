//! Pure wire formats: no I/O, no clock, no allocation on parse.
