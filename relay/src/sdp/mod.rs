//! SDP (RFC 8866) parsing and writing for the WhatsApp and internal legs.
