//! Certificate fingerprints as carried in SDP `a=fingerprint` (RFC 8122 §5).

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::DtlsError;

/// One type from SDP to the handshake: [`crate::sdp::Fingerprint`] is what `a=fingerprint`
/// parses to and prints from; this module adds what DTLS does with it (hash our certificate,
/// check the peer's).
pub use crate::sdp::Fingerprint;

/// The hash functions we can check a peer certificate against. Meta uses sha-256; the others
/// cost nothing to accept and some SIP/WebRTC stacks still send them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum HashFn {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashFn {
    fn from_name(name: &str) -> Option<HashFn> {
        match name {
            "sha-1" => Some(HashFn::Sha1),
            "sha-256" => Some(HashFn::Sha256),
            "sha-384" => Some(HashFn::Sha384),
            "sha-512" => Some(HashFn::Sha512),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashFn::Sha1 => Sha1::digest(data).to_vec(),
            HashFn::Sha256 => Sha256::digest(data).to_vec(),
            HashFn::Sha384 => Sha384::digest(data).to_vec(),
            HashFn::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

impl Fingerprint {
    /// The SHA-256 fingerprint of a DER certificate (the only kind we advertise).
    pub fn sha256_of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint {
            algorithm: Fingerprint::SHA256.to_string(),
            bytes: HashFn::Sha256.digest(cert_der),
        }
    }

    /// `sha-256 AB:CD:...`: the value of an SDP `a=fingerprint:` attribute.
    pub fn to_sdp_value(&self) -> String {
        self.to_string()
    }

    /// Parses the value of an SDP `a=fingerprint:` attribute (`sha-256 AB:CD:...`) with the
    /// SDP parser's rules (hash name case-insensitive and stored lowercase, hex either case,
    /// digest length checked for known hash functions).
    pub fn parse_sdp_value(value: &str) -> Result<Fingerprint, DtlsError> {
        crate::sdp::parse_fingerprint(value)
            .map_err(|why| DtlsError::BadFingerprint(format!("{why}: {value:?}")))
    }

    /// Whether `cert_der` hashes to this fingerprint. Unknown hash functions never match.
    /// The digest comparison takes the same time wherever the first difference is.
    pub fn matches(&self, cert_der: &[u8]) -> bool {
        let Some(hash) = HashFn::from_name(&self.algorithm.to_ascii_lowercase()) else {
            return false;
        };
        constant_time_eq(&hash.digest(cert_der), &self.bytes)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Lengths are public (they follow from the hash function); contents are compared without
    // an early exit.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_value_round_trips() {
        let fp = Fingerprint::sha256_of(b"not really a certificate");
        let text = fp.to_sdp_value();
        assert!(text.starts_with("sha-256 "));
        assert_eq!(text.len(), "sha-256 ".len() + 32 * 3 - 1);
        assert_eq!(Fingerprint::parse_sdp_value(&text).unwrap(), fp);
    }

    #[test]
    fn parse_is_case_insensitive_and_checks_length() {
        let upper = "SHA-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB";
        let fp = Fingerprint::parse_sdp_value(upper).unwrap();
        assert_eq!(fp.algorithm, "sha-1");
        assert_eq!(fp.bytes.len(), 20);
        assert_eq!(fp.bytes.first(), Some(&0x4a));

        let lower = "sha-256 ab:cd";
        assert!(matches!(
            Fingerprint::parse_sdp_value(lower),
            Err(DtlsError::BadFingerprint(_))
        ));
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        for bad in [
            "",
            "sha-256",
            "sha-256 ",
            "sha-256 A",
            "sha-256 ABC:DE",
            "sha-256 GG:00",
            "sha-256 AB::CD",
            "sha-256 AB:CD extra",
            "sha-256 é1:00",
        ] {
            assert!(Fingerprint::parse_sdp_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn matches_only_the_hashed_certificate() {
        let fp = Fingerprint::sha256_of(b"cert A");
        assert!(fp.matches(b"cert A"));
        assert!(!fp.matches(b"cert B"));
        let unknown = Fingerprint {
            algorithm: "md5".into(),
            bytes: vec![0; 16],
        };
        assert!(!unknown.matches(b"cert A"));
    }
}
