//! ICE (RFC 8445): the controlling full agent toward Meta's ice-lite side, and a lite responder.
