//! Published test vectors: RFC 3711 Appendix B.2 (AES-CM keystream) and RFC 7714 §16-17
//! (AEAD_AES_128_GCM and AEAD_AES_256_GCM, SRTP and SRTCP). The key derivation vectors of
//! RFC 3711 B.3 and RFC 6188 §7.2 are in `kdf`. RFC 7714 states its vectors with session keys,
//! so they enter below the key derivation.

use super::SrtpContext;
use super::cipher::{Cipher, SessionKey};
use super::profile::SrtpProfile;

/// Hex to bytes, ignoring whitespace. Test helper: panics on bad input.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 3711 Appendix B.2: keystream for SSRC 0, index 0 under the given session key and salt,
/// checked at the first three blocks and at counters 0xFEFF..0xFF01.
#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let enc = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let salt = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD");
    let Ok(Cipher::AesCm(cm)) = Cipher::aes_cm(SessionKey {
        enc: &enc,
        salt: &salt,
        auth: &[0; 20],
    }) else {
        panic!("AES-CM cipher");
    };
    let mut ks = vec![0u8; 0xff02 * 16];
    cm.apply_keystream(crate::wire::rtp::Ssrc::new(0), 0, &mut ks);
    let block = |n: usize| ks[n * 16..(n + 1) * 16].to_vec();
    assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
    assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
    assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
    assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
    assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
    assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
}

const KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// "Quid pro quo"
const SALT: &str = "517569642070726f2071756f";

/// RFC 7714 §16: header 8040f17b 8041f8d3 5501a0b2 (SEQ 0xf17b, SSRC 0x5501a0b2, ROC 0),
/// payload "Gallia est omnis divisa in partes tres".
const RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973 20646976
                   69736120 696e2070 61727465 73207472 6573";
/// RFC 7714 §16.1.1
const SRTP_128: &str = "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca
                        be633bd5 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1
                        6a9152cf 765ee439 0cce";
/// RFC 7714 §16.2.1
const SRTP_256: &str = "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa
                        b1801238 9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff
                        d6b0f9bb 7878d7a7 6c13";
/// RFC 7714 §17: the RTCP packet (SSRC "Mars") protected with SRTCP index 0x5d4.
const RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
                    4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";
/// RFC 7714 §17.1
const SRTCP_128: &str = "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7
                         6c06f32d c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458
                         96cf4d2f c5abf872 45d9eade 800005d4";
/// RFC 7714 §17.2
const SRTCP_256: &str = "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d
                         bffe0a50 a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c
                         4446839f 57ff6f6c b26ac3be 800005d4";
/// RFC 7714 §17.3: the same RTCP packet authenticated only (E = 0), AEAD_AES_128_GCM.
const SRTCP_128_AUTH_ONLY: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a
                                   0000e930 4c756e61 deadbeef deadbeef deadbeef deadbeef
                                   deadbeef 841dd968 3dd78ec9 2ae58790 125f62b3 000005d4";
const SRTCP_INDEX: u32 = 0x5d4;

fn gcm_context(profile: SrtpProfile, key: &str) -> SrtpContext {
    let (key, salt) = (hex(key), hex(SALT));
    let k = || SessionKey {
        enc: &key,
        salt: &salt,
        auth: &[],
    };
    SrtpContext::from_session_keys(profile, k(), k()).unwrap()
}

fn check_srtp(profile: SrtpProfile, key: &str, expected: &str) {
    let (rtp, srtp) = (hex(RTP), hex(expected));
    let mut buf = rtp.clone();
    buf.resize(rtp.len() + profile.rtp_overhead(), 0);
    let n = gcm_context(profile, key)
        .protect_rtp(&mut buf, rtp.len())
        .unwrap();
    assert_eq!(&buf[..n], &srtp[..], "{profile} protect");

    let mut buf = srtp.clone();
    let n = gcm_context(profile, key).unprotect_rtp(&mut buf).unwrap();
    assert_eq!(&buf[..n], &rtp[..], "{profile} unprotect");
}

fn check_srtcp(profile: SrtpProfile, key: &str, expected: &str) {
    let (rtcp, srtcp) = (hex(RTCP), hex(expected));
    let mut buf = srtcp.clone();
    let n = gcm_context(profile, key).unprotect_rtcp(&mut buf).unwrap();
    assert_eq!(&buf[..n], &rtcp[..], "{profile} unprotect");

    // Our send index counts from 0: protect 0x5d4 packets to reach the vector's index.
    let mut tx = gcm_context(profile, key);
    let mut buf = vec![0u8; rtcp.len() + profile.rtcp_overhead()];
    for _ in 0..SRTCP_INDEX {
        buf[..rtcp.len()].copy_from_slice(&rtcp);
        tx.protect_rtcp(&mut buf, rtcp.len()).unwrap();
    }
    buf[..rtcp.len()].copy_from_slice(&rtcp);
    let n = tx.protect_rtcp(&mut buf, rtcp.len()).unwrap();
    assert_eq!(&buf[..n], &srtcp[..], "{profile} protect");
}

#[test]
fn rfc7714_16_1_srtp_aead_aes_128_gcm() {
    check_srtp(SrtpProfile::AeadAes128Gcm, KEY_128, SRTP_128);
}

#[test]
fn rfc7714_16_2_srtp_aead_aes_256_gcm() {
    check_srtp(SrtpProfile::AeadAes256Gcm, KEY_256, SRTP_256);
}

#[test]
fn rfc7714_17_1_srtcp_aead_aes_128_gcm() {
    check_srtcp(SrtpProfile::AeadAes128Gcm, KEY_128, SRTCP_128);
}

#[test]
fn rfc7714_17_2_srtcp_aead_aes_256_gcm() {
    check_srtcp(SrtpProfile::AeadAes256Gcm, KEY_256, SRTCP_256);
}

#[test]
fn rfc7714_17_3_srtcp_authenticated_only() {
    let (rtcp, srtcp) = (hex(RTCP), hex(SRTCP_128_AUTH_ONLY));
    let mut buf = srtcp.clone();
    let n = gcm_context(SrtpProfile::AeadAes128Gcm, KEY_128)
        .unprotect_rtcp(&mut buf)
        .unwrap();
    assert_eq!(&buf[..n], &rtcp[..]);

    // One flipped bit in the clear payload must fail, and leave the packet as it was.
    let mut forged = srtcp.clone();
    forged[20] ^= 1;
    let mut buf = forged.clone();
    let r = gcm_context(SrtpProfile::AeadAes128Gcm, KEY_128).unprotect_rtcp(&mut buf);
    assert_eq!(r, Err(super::SrtpError::AuthFailed));
    assert_eq!(buf, forged);
}
