//! DTLS-SRTP (RFC 5764) driver around `dimpl`: certificate, fingerprint, key export.
