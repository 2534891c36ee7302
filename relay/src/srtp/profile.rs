//! SRTP protection profiles and master keys, shared by the DTLS driver (which exports keys),
//! SDES (which reads them from `a=crypto`) and the in-place SRTP transforms.

/// The profiles the relay speaks. DTLS negotiates one; SDES names one in `a=crypto`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    /// SRTP_AES128_CM_HMAC_SHA1_80 (RFC 3711 / RFC 5764), SDES name `AES_CM_128_HMAC_SHA1_80`.
    Aes128CmHmacSha1_80,
    /// SRTP_AEAD_AES_128_GCM (RFC 7714), SDES name `AEAD_AES_128_GCM`.
    AeadAes128Gcm,
    /// SRTP_AEAD_AES_256_GCM (RFC 7714), SDES name `AEAD_AES_256_GCM`.
    AeadAes256Gcm,
}

impl SrtpProfile {
    pub const ALL: [SrtpProfile; 3] = [
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
    ];

    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 | SrtpProfile::AeadAes128Gcm => 16,
            SrtpProfile::AeadAes256Gcm => 32,
        }
    }

    /// Master salt length in bytes.
    pub fn salt_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => 14,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 12,
        }
    }

    /// Bytes an SRTP packet grows by (auth tag, or AEAD tag).
    pub fn rtp_overhead(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => 10,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 16,
        }
    }

    /// Bytes an SRTCP packet grows by (tag + 4-byte E/index word).
    pub fn rtcp_overhead(self) -> usize {
        self.rtp_overhead() + 4
    }

    /// The name used in SDES `a=crypto` lines.
    pub fn sdes_name(self) -> &'static str {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    pub fn from_sdes_name(name: &str) -> Option<SrtpProfile> {
        SrtpProfile::ALL.into_iter().find(|p| p.sdes_name() == name)
    }
}

impl std::fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sdes_name())
    }
}

/// One direction's master key and salt. Built at setup (DTLS export or SDES), never per packet.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub profile: SrtpProfile,
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
}

impl std::fmt::Debug for MasterKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.profile)
    }
}

/// Keys for both directions of one leg: `local` protects what we send, `remote` unprotects what
/// we receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    pub local: MasterKey,
    pub remote: MasterKey,
}
