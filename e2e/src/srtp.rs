//! SRTP/SRTCP for the emulated peers, on webrtc-rs `webrtc-srtp` (independent of the relay's
//! in-place transforms). Allocates per packet: this is test equipment, not the packet path.

use relay::srtp::{MasterKey, SessionKeys, SrtpProfile};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

#[derive(Debug, thiserror::Error)]
#[error("srtp: {0}")]
pub struct SrtpError(pub String);

fn to_webrtc(p: SrtpProfile) -> ProtectionProfile {
    match p {
        SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
    }
}

fn context(key: &MasterKey) -> Result<Context, SrtpError> {
    // No replay protection on receive: the emulator records duplicates so tests can see them.
    Context::new(&key.key, &key.salt, to_webrtc(key.profile), None, None)
        .map_err(|e| SrtpError(e.to_string()))
}

/// Both directions of one SRTP session.
pub struct SrtpSession {
    profile: SrtpProfile,
    tx: Context,
    rx: Context,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SrtpSession({})", self.profile)
    }
}

impl SrtpSession {
    pub fn new(keys: &SessionKeys) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            profile: keys.local.profile,
            tx: context(&keys.local)?,
            rx: context(&keys.remote)?,
        })
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    pub fn protect_rtp(&mut self, rtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.tx
            .encrypt_rtp(rtp)
            .map(|b| b.to_vec())
            .map_err(|e| SrtpError(e.to_string()))
    }

    pub fn unprotect_rtp(&mut self, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.rx
            .decrypt_rtp(srtp)
            .map(|b| b.to_vec())
            .map_err(|e| SrtpError(e.to_string()))
    }

    pub fn protect_rtcp(&mut self, rtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.tx
            .encrypt_rtcp(rtcp)
            .map(|b| b.to_vec())
            .map_err(|e| SrtpError(e.to_string()))
    }

    pub fn unprotect_rtcp(&mut self, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.rx
            .decrypt_rtcp(srtcp)
            .map(|b| b.to_vec())
            .map_err(|e| SrtpError(e.to_string()))
    }
}
