//! relay.v1 API.
