//! [`SrtpContext`]: one direction of one leg, with per-SSRC rollover counters and replay windows.

use super::SrtpError;
use super::cipher::{Cipher, SRTCP_E_FLAG, SessionKey};
use super::header::{self, RTCP_CLEAR_PREFIX};
use super::kdf::{self, Label};
use super::profile::{MasterKey, SessionKeys, SrtpProfile};
use super::replay::estimate_index;
use super::streams::{RTCP_SLOTS, RTP_SLOTS, StreamTable};
use crate::wire::rtp::SeqNo;

/// The SRTCP index is 31 bits (RFC 3711 §3.4).
const MAX_SRTCP_INDEX: u64 = (1 << 31) - 1;

/// SRTP/SRTCP state for one direction of one leg: session keys (derived once), and per SSRC the
/// rollover counter and replay window for RTP and the index (send) or replay window (receive)
/// for RTCP. A context is meant for one direction; using one for both would share the windows.
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: Cipher,
    rtcp: Cipher,
    rtp_streams: StreamTable<RTP_SLOTS>,
    rtcp_streams: StreamTable<RTCP_SLOTS>,
}

impl std::fmt::Debug for SrtpContext {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SrtpContext({})", self.profile)
    }
}

impl SrtpContext {
    /// Derives the SRTP and SRTCP session keys from `key` (RFC 3711 §4.3, kdr = 0).
    pub fn new(key: &MasterKey) -> Result<Self, SrtpError> {
        let profile = key.profile;
        if key.key.len() != profile.key_len() || key.salt.len() != profile.salt_len() {
            return Err(SrtpError::BadKeyLength);
        }
        let derive_cipher = |enc_label, auth_label, salt_label| -> Result<Cipher, SrtpError> {
            let mut enc = [0u8; 32];
            let mut salt = [0u8; 14];
            let mut auth = [0u8; 20];
            let enc = enc
                .get_mut(..profile.key_len())
                .ok_or(SrtpError::BadKeyLength)?;
            let salt = salt
                .get_mut(..profile.salt_len())
                .ok_or(SrtpError::BadKeyLength)?;
            kdf::derive(&key.key, &key.salt, enc_label, enc)?;
            kdf::derive(&key.key, &key.salt, salt_label, salt)?;
            match profile {
                SrtpProfile::Aes128CmHmacSha1_80 => {
                    kdf::derive(&key.key, &key.salt, auth_label, &mut auth)?;
                    Cipher::aes_cm(SessionKey {
                        enc,
                        salt,
                        auth: &auth,
                    })
                }
                SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => {
                    Cipher::gcm(SessionKey {
                        enc,
                        salt,
                        auth: &[],
                    })
                }
            }
        };
        let rtp = derive_cipher(Label::RtpEncryption, Label::RtpAuth, Label::RtpSalt)?;
        let rtcp = derive_cipher(Label::RtcpEncryption, Label::RtcpAuth, Label::RtcpSalt)?;
        Ok(Self::from_ciphers(profile, rtp, rtcp))
    }

    /// Builds a context from session keys directly, skipping derivation (published AEAD vectors
    /// are stated that way).
    #[cfg(test)]
    pub(crate) fn from_session_keys(
        profile: SrtpProfile,
        rtp: SessionKey<'_>,
        rtcp: SessionKey<'_>,
    ) -> Result<Self, SrtpError> {
        let make = |k| match profile {
            SrtpProfile::Aes128CmHmacSha1_80 => Cipher::aes_cm(k),
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => Cipher::gcm(k),
        };
        Ok(Self::from_ciphers(profile, make(rtp)?, make(rtcp)?))
    }

    fn from_ciphers(profile: SrtpProfile, rtp: Cipher, rtcp: Cipher) -> Self {
        SrtpContext {
            profile,
            rtp,
            rtcp,
            rtp_streams: StreamTable::default(),
            rtcp_streams: StreamTable::default(),
        }
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Protects the RTP packet `buf[..len]` in place and appends the tag, so `buf` needs
    /// `profile().rtp_overhead()` bytes of room after `len`. Returns the SRTP length.
    ///
    /// An index (SSRC, ROC, SEQ) already protected, or older than the window, is refused:
    /// encrypting twice under one index reuses AES-CM keystream or a GCM nonce, which exposes
    /// plaintext and, for GCM, the authentication key.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let h = header::rtp_header(buf.get(..len).ok_or(SrtpError::BufferTooSmall)?)?;
        let window = self.rtp_streams.get(h.ssrc);
        let index = estimate_index(window.map(|w| SeqNo::new(w.top())), h.seq)?;
        if let Some(window) = window {
            window.check(index.get())?;
        }
        let out = self.rtp.seal_rtp(buf, h.len, len, h.ssrc, index)?;
        self.rtp_streams.commit(h.ssrc, index.get());
        Ok(out)
    }

    /// Unprotects the SRTP packet that is all of `buf`, in place. Returns the RTP length (the
    /// plaintext is `buf[..len]`).
    ///
    /// Order matters: the replay check runs on the header alone, before any authentication or
    /// decryption, so a replayed or stale packet costs a table lookup; the index is committed to
    /// the window (and the ROC advanced) only after the packet authenticates.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let body = buf
            .len()
            .checked_sub(self.rtp.tag_len())
            .ok_or(SrtpError::TooShort)?;
        let h = header::rtp_header(buf.get(..body).ok_or(SrtpError::TooShort)?)?;
        let window = self.rtp_streams.get(h.ssrc);
        let index = estimate_index(window.map(|w| SeqNo::new(w.top())), h.seq)?;
        if let Some(window) = window {
            window.check(index.get())?;
        }
        let len = self.rtp.open_rtp(buf, h.len, h.ssrc, index)?;
        self.rtp_streams.commit(h.ssrc, index.get());
        Ok(len)
    }

    /// Protects the RTCP (compound) packet `buf[..len]` in place: encrypts all but the first 8
    /// bytes, sets the E flag, and appends the SRTCP index and tag (`profile().rtcp_overhead()`
    /// bytes). The index counts from 0 per sender SSRC. Returns the SRTCP length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let ssrc = header::rtcp_ssrc(buf.get(..len).ok_or(SrtpError::BufferTooSmall)?)?;
        let index = self.rtcp_streams.get(ssrc).map_or(0, |w| w.top() + 1);
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        let out = self.rtcp.seal_rtcp(buf, len, ssrc, index as u32)?;
        self.rtcp_streams.commit(ssrc, index);
        Ok(out)
    }

    /// Unprotects the SRTCP packet that is all of `buf`, in place. Returns the RTCP length.
    /// Same order as [`unprotect_rtp`](Self::unprotect_rtp): replay check on the clear SRTCP
    /// index first, commit only after authentication. Packets with the E flag clear are
    /// authenticated and returned as they are.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        if buf.len() < RTCP_CLEAR_PREFIX + self.profile.rtcp_overhead() {
            return Err(SrtpError::TooShort);
        }
        let ssrc = header::rtcp_ssrc(buf)?;
        let word = self.rtcp.rtcp_index_word(buf).ok_or(SrtpError::TooShort)?;
        let index = u64::from(word & !SRTCP_E_FLAG);
        if let Some(window) = self.rtcp_streams.get(ssrc) {
            window.check(index)?;
        }
        let len = self.rtcp.open_rtcp(buf, ssrc, word)?;
        self.rtcp_streams.commit(ssrc, index);
        Ok(len)
    }
}

/// Both directions of one leg.
#[derive(Debug)]
pub struct SrtpSession {
    /// Protects what we send (keys.local).
    pub tx: SrtpContext,
    /// Unprotects what we receive (keys.remote).
    pub rx: SrtpContext,
}

impl SrtpSession {
    pub fn new(keys: &SessionKeys) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            tx: SrtpContext::new(&keys.local)?,
            rx: SrtpContext::new(&keys.remote)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::sdes::random_master_key;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// An RTP packet with `csrcs` CSRCs, an extension of `ext_words` words if any, and
    /// `payload` bytes of a pattern derived from `seq`.
    fn rtp(ssrc: u32, seq: u16, csrcs: u8, ext_words: Option<u16>, payload: usize) -> Vec<u8> {
        let x = if ext_words.is_some() { 0x10 } else { 0 };
        let mut p = vec![0x80 | x | csrcs, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for c in 0..u32::from(csrcs) {
            p.extend_from_slice(&(0xc000 + c).to_be_bytes());
        }
        if let Some(words) = ext_words {
            p.extend_from_slice(&[0xbe, 0xde]);
            p.extend_from_slice(&words.to_be_bytes());
            p.extend((0..words * 4).map(|i| i as u8));
        }
        p.extend((0..payload).map(|i| (i as u8) ^ (seq as u8)));
        p
    }

    fn rtcp_sr(ssrc: u32, extra_words: usize) -> Vec<u8> {
        let words = 6 + extra_words;
        let mut p = vec![0x80, 200];
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..words * 4).map(|i| i as u8));
        p
    }

    fn pair(profile: SrtpProfile) -> (SrtpContext, SrtpContext) {
        let key = random_master_key(profile);
        (
            SrtpContext::new(&key).unwrap(),
            SrtpContext::new(&key).unwrap(),
        )
    }

    fn protect(tx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + tx.profile().rtp_overhead(), 0);
        let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect(rx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtp.to_vec();
        let n = rx.unprotect_rtp(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn round_trip_every_profile_with_csrcs_extensions_and_empty_payloads() {
        let mut rng = StdRng::seed_from_u64(7);
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            for seq in 0..200u16 {
                let ext = rng.random_bool(0.5).then(|| rng.random_range(0..4));
                let plain = rtp(
                    0x1234,
                    seq,
                    rng.random_range(0..4),
                    ext,
                    rng.random_range(0..300),
                );
                let srtp = protect(&mut tx, &plain);
                assert_eq!(srtp.len(), plain.len() + profile.rtp_overhead());
                let header_len = header::rtp_header(&plain).unwrap().len;
                assert_eq!(
                    srtp[..header_len],
                    plain[..header_len],
                    "header stays clear"
                );
                assert_eq!(unprotect(&mut rx, &srtp), Ok(plain), "{profile} seq {seq}");
            }
            for n in 0..20 {
                let plain = rtcp_sr(0x1234, n);
                let mut buf = plain.clone();
                buf.resize(plain.len() + profile.rtcp_overhead(), 0);
                let len = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
                assert_eq!(len, buf.len());
                assert_eq!(rx.unprotect_rtcp(&mut buf), Ok(plain.len()));
                assert_eq!(buf[..plain.len()], plain[..]);
            }
        }
    }

    #[test]
    fn rollover_counter_follows_sequence_wrap_and_reordering() {
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            let mut sent = Vec::new();
            // Three wraps, with packets delivered slightly out of order around them.
            for i in 0..(3 * 65536u32 + 100) {
                let seq = (65000 + i) as u16;
                if i % 97 == 0 || i > 3 * 65536 {
                    sent.push(protect(&mut tx, &rtp(9, seq, 0, None, 20)));
                } else {
                    // The sender's ROC advances even for packets the receiver never sees.
                    let mut buf = rtp(9, seq, 0, None, 0);
                    buf.resize(buf.len() + profile.rtp_overhead(), 0);
                    tx.protect_rtp(&mut buf, 12).unwrap();
                }
            }
            // Swap neighbours, so every packet arrives after a later one.
            for pair in sent.chunks_mut(2) {
                pair.reverse();
            }
            for srtp in &sent {
                assert!(unprotect(&mut rx, srtp).is_ok(), "{profile}");
            }
            // Across the next wrap, a packet from before it arrives after one from after it.
            let wrap: Vec<_> = [65534u16, 65535, 0, 1]
                .iter()
                .map(|&seq| protect(&mut tx, &rtp(9, seq, 0, None, 20)))
                .collect();
            for i in [0, 2, 1, 3] {
                assert_eq!(
                    unprotect(&mut rx, &wrap[i]),
                    Ok(rtp(9, [65534u16, 65535, 0, 1][i], 0, None, 20)),
                    "{profile} {i}"
                );
            }
            assert_eq!(unprotect(&mut rx, &wrap[1]), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn replay_duplicate_and_too_old_are_rejected_reordering_is_not() {
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            let packets: Vec<_> = (0..2000u16)
                .map(|seq| protect(&mut tx, &rtp(5, seq, 0, None, 10)))
                .collect();
            assert!(unprotect(&mut rx, &packets[1500]).is_ok());
            assert_eq!(unprotect(&mut rx, &packets[1500]), Err(SrtpError::Replayed));
            // Out of order inside the window (1024 packets): accepted once.
            assert!(unprotect(&mut rx, &packets[1499]).is_ok());
            assert!(unprotect(&mut rx, &packets[1500 - 1023]).is_ok());
            assert_eq!(unprotect(&mut rx, &packets[1499]), Err(SrtpError::Replayed));
            assert_eq!(
                unprotect(&mut rx, &packets[1500 - 1024]),
                Err(SrtpError::TooOld)
            );
            assert!(unprotect(&mut rx, &packets[1501]).is_ok());
        }
    }

    #[test]
    fn tampered_packet_fails_and_moves_nothing() {
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            let packets: Vec<_> = (0..3000u16)
                .map(|seq| protect(&mut tx, &rtp(5, seq, 1, Some(1), 30)))
                .collect();
            assert!(unprotect(&mut rx, &packets[100]).is_ok());
            // A forgery far ahead: if it moved the window, 100..=1123 would become too old.
            for byte in [1usize, 12, 20, packets[2500].len() - 1] {
                let mut forged = packets[2500].clone();
                forged[byte] ^= 0x40;
                assert_eq!(
                    unprotect(&mut rx, &forged),
                    Err(SrtpError::AuthFailed),
                    "{byte}"
                );
            }
            assert!(unprotect(&mut rx, &packets[99]).is_ok());
            assert!(
                unprotect(&mut rx, &packets[2500]).is_ok(),
                "genuine copy still new"
            );
            // A forged first packet of a new SSRC must not create state for it either.
            let other = protect(&mut tx, &rtp(6, 40000, 0, None, 10));
            let mut forged = other.clone();
            forged[14] ^= 1;
            assert_eq!(unprotect(&mut rx, &forged), Err(SrtpError::AuthFailed));
            assert!(rx.rtp_streams.get(crate::wire::rtp::Ssrc::new(6)).is_none());
            assert!(unprotect(&mut rx, &other).is_ok());
        }
    }

    /// A replay is refused from the header alone: even with its tag and payload garbled it is
    /// reported as `Replayed`, not `AuthFailed`, and the buffer is untouched, so neither
    /// authentication nor decryption ran.
    #[test]
    fn replay_is_rejected_before_any_crypto() {
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            let srtp = protect(&mut tx, &rtp(5, 10, 0, None, 50));
            assert!(unprotect(&mut rx, &srtp).is_ok());
            let mut garbled = srtp.clone();
            for b in &mut garbled[12..] {
                *b = !*b;
            }
            let mut buf = garbled.clone();
            assert_eq!(rx.unprotect_rtp(&mut buf), Err(SrtpError::Replayed));
            assert_eq!(buf, garbled);

            let plain = rtcp_sr(5, 2);
            let mut srtcp = plain.clone();
            srtcp.resize(plain.len() + profile.rtcp_overhead(), 0);
            tx.protect_rtcp(&mut srtcp, plain.len()).unwrap();
            rx.unprotect_rtcp(&mut srtcp.clone()).unwrap();
            let tag_start = srtcp.len() - profile.rtp_overhead();
            let tag_start = match profile {
                SrtpProfile::Aes128CmHmacSha1_80 => tag_start,
                _ => tag_start - 4,
            };
            let mut garbled = srtcp.clone();
            garbled[tag_start] ^= 0xff;
            garbled[9] ^= 0xff;
            let mut buf = garbled.clone();
            assert_eq!(rx.unprotect_rtcp(&mut buf), Err(SrtpError::Replayed));
            assert_eq!(buf, garbled);
        }
    }

    #[test]
    fn sender_refuses_to_reuse_an_index() {
        let (mut tx, _) = pair(SrtpProfile::AeadAes128Gcm);
        let plain = rtp(1, 500, 0, None, 10);
        protect(&mut tx, &plain);
        let mut buf = plain.clone();
        buf.resize(plain.len() + 16, 0);
        assert_eq!(
            tx.protect_rtp(&mut buf, plain.len()),
            Err(SrtpError::Replayed)
        );
    }

    #[test]
    fn several_ssrcs_are_tracked_independently() {
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            for round in 0..50u16 {
                for ssrc in 0..8u32 {
                    let seq = round.wrapping_add(ssrc as u16 * 7000);
                    let srtp = protect(&mut tx, &rtp(ssrc, seq, 0, None, 8));
                    assert!(unprotect(&mut rx, &srtp).is_ok());
                    assert_eq!(unprotect(&mut rx, &srtp), Err(SrtpError::Replayed));
                }
            }
        }
    }

    #[test]
    fn short_buffers_and_garbage_are_errors_not_panics() {
        let mut rng = StdRng::seed_from_u64(1);
        for profile in SrtpProfile::ALL {
            let (mut tx, mut rx) = pair(profile);
            let plain = rtp(1, 1, 0, None, 20);
            let mut buf = plain.clone();
            assert_eq!(
                tx.protect_rtp(&mut buf, plain.len()),
                Err(SrtpError::BufferTooSmall)
            );
            assert_eq!(buf, plain, "nothing encrypted when the tag does not fit");
            assert_eq!(
                tx.protect_rtp(&mut buf, plain.len() + 1),
                Err(SrtpError::BufferTooSmall)
            );
            assert_eq!(
                tx.protect_rtcp(&mut [0x80; 8], 8),
                Err(SrtpError::BufferTooSmall)
            );
            assert_eq!(rx.unprotect_rtp(&mut []), Err(SrtpError::TooShort));
            assert_eq!(rx.unprotect_rtcp(&mut [0x80; 20]), Err(SrtpError::TooShort));
            // Header claims a 15-CSRC header the packet does not have.
            let mut bad = vec![0x8f; 40];
            assert_eq!(rx.unprotect_rtp(&mut bad), Err(SrtpError::Malformed));
            for _ in 0..20_000 {
                let len = rng.random_range(0..80);
                let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if rng.random_bool(0.8) && len > 0 {
                    junk[0] = 0x80 | (junk[0] & 0x3f);
                }
                assert!(rx.unprotect_rtp(&mut junk.clone()).is_err());
                assert!(rx.unprotect_rtcp(&mut junk.clone()).is_err());
                let cut = rng.random_range(0..=len);
                let _ = tx.protect_rtp(&mut junk.clone(), cut);
                let _ = tx.protect_rtcp(&mut junk, cut);
            }
        }
    }

    #[test]
    fn srtcp_index_exhaustion_is_an_error() {
        let (mut tx, _) = pair(SrtpProfile::Aes128CmHmacSha1_80);
        tx.rtcp_streams
            .commit(crate::wire::rtp::Ssrc::new(77), MAX_SRTCP_INDEX);
        let plain = rtcp_sr(77, 0);
        let mut buf = plain.clone();
        buf.resize(plain.len() + 14, 0);
        assert_eq!(
            tx.protect_rtcp(&mut buf, plain.len()),
            Err(SrtpError::KeyExhausted)
        );
    }

    #[test]
    fn wrong_key_lengths_are_refused() {
        for profile in SrtpProfile::ALL {
            let mut key = random_master_key(profile);
            key.salt.push(0);
            assert_eq!(SrtpContext::new(&key).err(), Some(SrtpError::BadKeyLength));
            key.salt.pop();
            key.key.pop();
            assert_eq!(SrtpContext::new(&key).err(), Some(SrtpError::BadKeyLength));
        }
    }

    #[test]
    fn session_uses_local_to_send_and_remote_to_receive() {
        let a = random_master_key(SrtpProfile::AeadAes256Gcm);
        let b = random_master_key(SrtpProfile::AeadAes256Gcm);
        let mut us = SrtpSession::new(&SessionKeys {
            local: a.clone(),
            remote: b.clone(),
        })
        .unwrap();
        let mut them = SrtpSession::new(&SessionKeys {
            local: b,
            remote: a,
        })
        .unwrap();
        let plain = rtp(3, 3, 0, None, 30);
        let srtp = protect(&mut us.tx, &plain);
        assert_eq!(unprotect(&mut them.rx, &srtp), Ok(plain.clone()));
        let srtp = protect(&mut them.tx, &plain);
        assert_eq!(unprotect(&mut us.rx, &srtp), Ok(plain));
    }
}
