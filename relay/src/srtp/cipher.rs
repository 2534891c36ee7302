//! The per-packet transforms: AES-CM + HMAC-SHA1-80 (RFC 3711 §4.1.1, §4.2.1) and AES-GCM
//! (RFC 7714 §8, §9). Each holds session keys already expanded: a packet borrows the AES key
//! schedule and copies the keyed HMAC state (inner and outer SHA-1 states), never re-keys.
//!
//! Both transforms place the index the same way in their IV: SSRC in bytes 2..6 of the 12-byte
//! GCM nonce (4..8 of the 16-byte CM counter), then the 48-bit index (ROC || SEQ for SRTP, the
//! 31-bit SRTCP index zero-extended for SRTCP) in the 6 bytes after it, all XORed with the salt.

use aes::Aes128Enc;
use aes::cipher::KeyInit;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use ctr::CtrCore;
use ctr::cipher::{InnerIvInit, StreamCipherCore};
use ctr::flavors::Ctr128BE;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::SrtpError;
use super::header::RTCP_CLEAR_PREFIX;
use crate::wire::rtp::{SeqNo, Ssrc};

/// The E flag of the SRTCP trailer word: set when the payload is encrypted.
pub(crate) const SRTCP_E_FLAG: u32 = 1 << 31;
const INDEX_WORD: usize = 4;
const CM_TAG: usize = 10;
const GCM_TAG: usize = 16;

/// Session keys for one of SRTP or SRTCP, as derived (or as given by a test vector).
pub(crate) struct SessionKey<'a> {
    pub enc: &'a [u8],
    pub salt: &'a [u8],
    /// HMAC key; empty for AEAD profiles.
    pub auth: &'a [u8],
}

pub(crate) enum Cipher {
    AesCm(AesCm),
    Gcm128(Gcm<Aes128Gcm>),
    Gcm256(Gcm<Aes256Gcm>),
}

/// Forwards a call to whichever transform this is.
macro_rules! each {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            Cipher::AesCm($c) => $e,
            Cipher::Gcm128($c) => $e,
            Cipher::Gcm256($c) => $e,
        }
    };
}

impl Cipher {
    pub(crate) fn aes_cm(key: SessionKey<'_>) -> Result<Self, SrtpError> {
        Ok(Cipher::AesCm(AesCm {
            aes: Aes128Enc::new_from_slice(key.enc).map_err(|_| SrtpError::BadKeyLength)?,
            salt: key.salt.try_into().map_err(|_| SrtpError::BadKeyLength)?,
            mac: <Hmac<Sha1> as Mac>::new_from_slice(key.auth)
                .map_err(|_| SrtpError::BadKeyLength)?,
        }))
    }

    pub(crate) fn gcm(key: SessionKey<'_>) -> Result<Self, SrtpError> {
        let salt = key.salt.try_into().map_err(|_| SrtpError::BadKeyLength)?;
        Ok(match key.enc.len() {
            16 => Cipher::Gcm128(Gcm::new(key.enc, salt)?),
            32 => Cipher::Gcm256(Gcm::new(key.enc, salt)?),
            _ => return Err(SrtpError::BadKeyLength),
        })
    }

    /// Bytes an SRTP packet grows by.
    pub(crate) fn tag_len(&self) -> usize {
        match self {
            Cipher::AesCm(_) => CM_TAG,
            Cipher::Gcm128(_) | Cipher::Gcm256(_) => GCM_TAG,
        }
    }

    /// Encrypts `buf[hdr..len]` and appends the tag; `hdr <= len`. Returns the SRTP length.
    pub(crate) fn seal_rtp(
        &self,
        buf: &mut [u8],
        hdr: usize,
        len: usize,
        ssrc: Ssrc,
        index: SeqNo,
    ) -> Result<usize, SrtpError> {
        let end = len
            .checked_add(self.tag_len())
            .filter(|&end| end <= buf.len())
            .ok_or(SrtpError::BufferTooSmall)?;
        let packet = buf.get_mut(..end).ok_or(SrtpError::BufferTooSmall)?;
        each!(self, c => c.seal_rtp(packet, hdr, ssrc, index.get()))?;
        Ok(end)
    }

    /// Authenticates then decrypts the SRTP packet that is all of `buf`. Returns the RTP length.
    pub(crate) fn open_rtp(
        &self,
        buf: &mut [u8],
        hdr: usize,
        ssrc: Ssrc,
        index: SeqNo,
    ) -> Result<usize, SrtpError> {
        each!(self, c => c.open_rtp(buf, hdr, ssrc, index.get()))?;
        Ok(buf.len() - self.tag_len())
    }

    /// Encrypts the RTCP packet `buf[..len]` after its first 8 bytes and appends the E flag,
    /// `index` and the tag in the profile's order. Returns the SRTCP length.
    pub(crate) fn seal_rtcp(
        &self,
        buf: &mut [u8],
        len: usize,
        ssrc: Ssrc,
        index: u32,
    ) -> Result<usize, SrtpError> {
        let end = len
            .checked_add(self.tag_len() + INDEX_WORD)
            .filter(|&end| end <= buf.len())
            .ok_or(SrtpError::BufferTooSmall)?;
        let packet = buf.get_mut(..end).ok_or(SrtpError::BufferTooSmall)?;
        each!(self, c => c.seal_rtcp(packet, ssrc, index | SRTCP_E_FLAG))?;
        Ok(end)
    }

    /// The E flag / SRTCP index word of the SRTCP packet `packet`, wherever the profile puts it.
    pub(crate) fn rtcp_index_word(&self, packet: &[u8]) -> Option<u32> {
        let at = match self {
            // RFC 3711 §3.4: ... || E || SRTCP index || [MKI] || auth tag
            Cipher::AesCm(_) => packet.len().checked_sub(CM_TAG + INDEX_WORD)?,
            // RFC 7714 §9: ... || ciphertext || tag || E || SRTCP index
            Cipher::Gcm128(_) | Cipher::Gcm256(_) => packet.len().checked_sub(INDEX_WORD)?,
        };
        super::header::be32(packet, at)
    }

    /// Authenticates then (if the E flag in `word` is set) decrypts the SRTCP packet that is all
    /// of `buf`. Returns the RTCP length.
    pub(crate) fn open_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: Ssrc,
        word: u32,
    ) -> Result<usize, SrtpError> {
        each!(self, c => c.open_rtcp(buf, ssrc, word))?;
        Ok(buf.len() - self.tag_len() - INDEX_WORD)
    }
}

/// AES-128 in counter mode with HMAC-SHA1 truncated to 80 bits.
pub(crate) struct AesCm {
    aes: Aes128Enc,
    salt: [u8; 14],
    /// Keyed once; cloned per packet.
    mac: Hmac<Sha1>,
}

impl AesCm {
    /// XORs the keystream for (`ssrc`, `index`) into `data` (RFC 3711 §4.1.1).
    pub(crate) fn apply_keystream(&self, ssrc: Ssrc, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        xor_into(&mut iv[4..8], &ssrc.to_be_bytes());
        xor_into(&mut iv[8..14], &index48(index));
        // Keyed by reference: no copy of the expanded key per packet.
        CtrCore::<&Aes128Enc, Ctr128BE>::inner_iv_init(&self.aes, &iv.into())
            .apply_keystream_partial(data.into());
    }

    fn seal_rtp(
        &self,
        packet: &mut [u8],
        hdr: usize,
        ssrc: Ssrc,
        index: u64,
    ) -> Result<(), SrtpError> {
        let (body, tag) = split_tail(packet, CM_TAG)?;
        self.apply_keystream(ssrc, index, body.get_mut(hdr..).ok_or(SrtpError::TooShort)?);
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.update(&roc(index));
        tag.copy_from_slice(&mac.finalize().into_bytes()[..CM_TAG]);
        Ok(())
    }

    fn open_rtp(
        &self,
        packet: &mut [u8],
        hdr: usize,
        ssrc: Ssrc,
        index: u64,
    ) -> Result<(), SrtpError> {
        let (body, tag) = split_tail(packet, CM_TAG)?;
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.update(&roc(index));
        mac.verify_truncated_left(tag)
            .map_err(|_| SrtpError::AuthFailed)?;
        self.apply_keystream(ssrc, index, body.get_mut(hdr..).ok_or(SrtpError::TooShort)?);
        Ok(())
    }

    fn seal_rtcp(&self, packet: &mut [u8], ssrc: Ssrc, word: u32) -> Result<(), SrtpError> {
        let (authed, tag) = split_tail(packet, CM_TAG)?;
        let (rtcp, index_word) = split_tail(authed, INDEX_WORD)?;
        let payload = rtcp
            .get_mut(RTCP_CLEAR_PREFIX..)
            .ok_or(SrtpError::TooShort)?;
        self.apply_keystream(ssrc, u64::from(word & !SRTCP_E_FLAG), payload);
        index_word.copy_from_slice(&word.to_be_bytes());
        let mut mac = self.mac.clone();
        mac.update(authed);
        tag.copy_from_slice(&mac.finalize().into_bytes()[..CM_TAG]);
        Ok(())
    }

    fn open_rtcp(&self, packet: &mut [u8], ssrc: Ssrc, word: u32) -> Result<(), SrtpError> {
        let (authed, tag) = split_tail(packet, CM_TAG)?;
        let mut mac = self.mac.clone();
        mac.update(authed);
        mac.verify_truncated_left(tag)
            .map_err(|_| SrtpError::AuthFailed)?;
        if word & SRTCP_E_FLAG != 0 {
            let (rtcp, _) = split_tail(authed, INDEX_WORD)?;
            let payload = rtcp
                .get_mut(RTCP_CLEAR_PREFIX..)
                .ok_or(SrtpError::TooShort)?;
            self.apply_keystream(ssrc, u64::from(word & !SRTCP_E_FLAG), payload);
        }
        Ok(())
    }
}

/// AES-GCM with a 16-byte tag and a 12-byte salt.
pub(crate) struct Gcm<A> {
    aead: A,
    salt: [u8; 12],
}

impl<A> Gcm<A>
where
    A: AeadInPlace<NonceSize = U12, TagSize = U16> + KeyInit,
{
    fn new(key: &[u8], salt: [u8; 12]) -> Result<Self, SrtpError> {
        let aead = A::new_from_slice(key).map_err(|_| SrtpError::BadKeyLength)?;
        Ok(Gcm { aead, salt })
    }

    /// RFC 7714 §8.1 / §9.1: salt XOR (0^16 || SSRC || 48-bit index).
    fn nonce(&self, ssrc: Ssrc, index: u64) -> aes_gcm::Nonce<U12> {
        let mut iv = self.salt;
        xor_into(&mut iv[2..6], &ssrc.to_be_bytes());
        xor_into(&mut iv[6..12], &index48(index));
        iv.into()
    }

    /// RFC 7714 §8: AAD is the RTP header, the payload becomes ciphertext || tag.
    fn seal_rtp(
        &self,
        packet: &mut [u8],
        hdr: usize,
        ssrc: Ssrc,
        index: u64,
    ) -> Result<(), SrtpError> {
        let (body, tag) = split_tail(packet, GCM_TAG)?;
        let (header, payload) = body.split_at_mut_checked(hdr).ok_or(SrtpError::TooShort)?;
        let t = self
            .aead
            .encrypt_in_place_detached(&self.nonce(ssrc, index), header, payload)
            .map_err(|_| SrtpError::Malformed)?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    fn open_rtp(
        &self,
        packet: &mut [u8],
        hdr: usize,
        ssrc: Ssrc,
        index: u64,
    ) -> Result<(), SrtpError> {
        let (body, tag) = split_tail(packet, GCM_TAG)?;
        let (header, payload) = body.split_at_mut_checked(hdr).ok_or(SrtpError::TooShort)?;
        self.aead
            .decrypt_in_place_detached(&self.nonce(ssrc, index), header, payload, (&*tag).into())
            .map_err(|_| SrtpError::AuthFailed)
    }

    /// RFC 7714 §9: AAD is the first 8 bytes || E || index; the rest becomes ciphertext, then
    /// the tag, then the E/index word.
    fn seal_rtcp(&self, packet: &mut [u8], ssrc: Ssrc, word: u32) -> Result<(), SrtpError> {
        let (sealed, index_word) = split_tail(packet, INDEX_WORD)?;
        let (rtcp, tag) = split_tail(sealed, GCM_TAG)?;
        let (clear, payload) = rtcp
            .split_at_mut_checked(RTCP_CLEAR_PREFIX)
            .ok_or(SrtpError::TooShort)?;
        let aad = rtcp_aad(clear, word)?;
        let nonce = self.nonce(ssrc, u64::from(word & !SRTCP_E_FLAG));
        let t = self
            .aead
            .encrypt_in_place_detached(&nonce, &aad, payload)
            .map_err(|_| SrtpError::Malformed)?;
        tag.copy_from_slice(&t);
        index_word.copy_from_slice(&word.to_be_bytes());
        Ok(())
    }

    fn open_rtcp(&self, packet: &mut [u8], ssrc: Ssrc, word: u32) -> Result<(), SrtpError> {
        let nonce = self.nonce(ssrc, u64::from(word & !SRTCP_E_FLAG));
        if word & SRTCP_E_FLAG != 0 {
            let (sealed, _) = split_tail(packet, INDEX_WORD)?;
            let (rtcp, tag) = split_tail(sealed, GCM_TAG)?;
            let (clear, payload) = rtcp
                .split_at_mut_checked(RTCP_CLEAR_PREFIX)
                .ok_or(SrtpError::TooShort)?;
            let aad = rtcp_aad(clear, word)?;
            return self
                .aead
                .decrypt_in_place_detached(&nonce, &aad, payload, (&*tag).into())
                .map_err(|_| SrtpError::AuthFailed);
        }
        // Unencrypted SRTCP (RFC 7714 §9.2, E = 0): the whole RTCP packet and the E/index word
        // are AAD. The tag sits between them, so move the word over the start of the tag to
        // authenticate one contiguous slice, then put the tag back.
        let tag_at = packet
            .len()
            .checked_sub(GCM_TAG + INDEX_WORD)
            .ok_or(SrtpError::TooShort)?;
        let tag_range = tag_at..tag_at + GCM_TAG;
        let saved: [u8; GCM_TAG] = packet
            .get(tag_range.clone())
            .and_then(|t| t.try_into().ok())
            .ok_or(SrtpError::TooShort)?;
        let aad_end = tag_at + INDEX_WORD;
        packet
            .get_mut(tag_at..aad_end)
            .ok_or(SrtpError::TooShort)?
            .copy_from_slice(&word.to_be_bytes());
        let aad = packet.get(..aad_end).ok_or(SrtpError::TooShort)?;
        let verdict = self
            .aead
            .decrypt_in_place_detached(&nonce, aad, &mut [], (&saved).into())
            .map_err(|_| SrtpError::AuthFailed);
        packet
            .get_mut(tag_range)
            .ok_or(SrtpError::TooShort)?
            .copy_from_slice(&saved);
        verdict
    }
}

/// First 8 bytes of the RTCP packet followed by the E/index word.
fn rtcp_aad(clear: &[u8], word: u32) -> Result<[u8; RTCP_CLEAR_PREFIX + INDEX_WORD], SrtpError> {
    let mut aad = [0u8; RTCP_CLEAR_PREFIX + INDEX_WORD];
    aad[..RTCP_CLEAR_PREFIX]
        .copy_from_slice(clear.get(..RTCP_CLEAR_PREFIX).ok_or(SrtpError::TooShort)?);
    aad[RTCP_CLEAR_PREFIX..].copy_from_slice(&word.to_be_bytes());
    Ok(aad)
}

/// Splits off the last `n` bytes.
fn split_tail(buf: &mut [u8], n: usize) -> Result<(&mut [u8], &mut [u8]), SrtpError> {
    let at = buf.len().checked_sub(n).ok_or(SrtpError::TooShort)?;
    Ok(buf.split_at_mut(at))
}

/// The low 48 bits of `index`, big-endian.
fn index48(index: u64) -> [u8; 6] {
    let b = index.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The rollover counter (high 32 of the 48-bit index), big-endian, as HMAC input.
fn roc(index: u64) -> [u8; 4] {
    ((index >> 16) as u32).to_be_bytes()
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}
