//! Session key derivation: the AES-CM PRF of RFC 3711 §4.3.3 with key derivation rate 0
//! (RFC 5764 and RFC 4568 as used here never set one), with AES-256 for 256-bit master keys
//! (RFC 6188 §6, which RFC 7714 §11 uses for AEAD_AES_256_GCM).

use aes::cipher::consts::U16;
use aes::cipher::{BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128Enc, Aes256Enc};

use super::SrtpError;

/// Key derivation labels (RFC 3711 §4.3.1, §4.3.2).
#[derive(Copy, Clone, Debug)]
#[repr(u8)]
pub(crate) enum Label {
    RtpEncryption = 0x00,
    RtpAuth = 0x01,
    RtpSalt = 0x02,
    RtcpEncryption = 0x03,
    RtcpAuth = 0x04,
    RtcpSalt = 0x05,
}

/// Fills `out` with the PRF output for `label`.
///
/// The PRF input is x = (label || index DIV kdr) XOR master_salt, right-aligned in 112 bits, then
/// shifted left 16 bits to make the AES-CM IV. With kdr = 0 the index term is zero, so x is the
/// salt with the label XORed into byte 7. A 96-bit (AEAD) salt fills the first 12 of those 14
/// bytes and the rest are zero, as libsrtp and webrtc do.
pub(crate) fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: Label,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    let mut iv = [0u8; 16];
    iv.get_mut(..master_salt.len())
        .filter(|_| master_salt.len() <= 14)
        .ok_or(SrtpError::BadKeyLength)?
        .copy_from_slice(master_salt);
    iv[7] ^= label as u8;

    match master_key.len() {
        16 => keystream(&Aes128Enc::new(master_key.into()), iv, out),
        32 => keystream(&Aes256Enc::new(master_key.into()), iv, out),
        _ => return Err(SrtpError::BadKeyLength),
    }
    Ok(())
}

/// AES in counter mode over the low 16 bits of `iv`, written straight into `out`.
fn keystream<C: BlockEncrypt + BlockSizeUser<BlockSize = U16>>(
    aes: &C,
    mut iv: [u8; 16],
    out: &mut [u8],
) {
    for (counter, chunk) in (0u16..).zip(out.chunks_mut(16)) {
        iv[14..].copy_from_slice(&counter.to_be_bytes());
        let mut block = iv.into();
        aes.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::vectors::hex;

    fn derived(key: &str, salt: &str, label: Label, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        derive(&hex(key), &hex(salt), label, &mut out).unwrap();
        out
    }

    /// RFC 3711 Appendix B.3.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let key = "E1F97A0D3E018BE0D64FA32C06DE4139";
        let salt = "0EC675AD498AFEEBB6960B3AABE6";
        assert_eq!(
            derived(key, salt, Label::RtpEncryption, 16),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(
            derived(key, salt, Label::RtpSalt, 14),
            hex("30CBBC08863D8C85D49DB34A9AE1")
        );
        assert_eq!(
            derived(key, salt, Label::RtpAuth, 20),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// RFC 6188 §7.2: AES_256_CM_PRF.
    #[test]
    fn rfc6188_aes256_key_derivation() {
        let key = "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6";
        let salt = "3b04803de51ee7c96423ab5b78d2";
        assert_eq!(
            derived(key, salt, Label::RtpEncryption, 32),
            hex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")
        );
        assert_eq!(
            derived(key, salt, Label::RtpSalt, 14),
            hex("fa31791685ca444a9e07c6c64e93")
        );
        assert_eq!(
            derived(key, salt, Label::RtpAuth, 20),
            hex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05")
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut out = [0u8; 16];
        assert_eq!(
            derive(&[0; 24], &[0; 14], Label::RtpEncryption, &mut out),
            Err(SrtpError::BadKeyLength)
        );
        assert_eq!(
            derive(&[0; 16], &[0; 15], Label::RtpEncryption, &mut out),
            Err(SrtpError::BadKeyLength)
        );
    }
}
