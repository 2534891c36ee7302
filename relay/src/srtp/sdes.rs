//! SDES key parameters (RFC 4568 §6.1): `inline:<base64(key || salt)>[|lifetime][|MKI:length]`.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use rand::RngCore;

use super::SrtpError;
use super::profile::{MasterKey, SrtpProfile};

/// Peers differ on padding the base64 of 28- and 44-byte AEAD key||salt; accept either.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Shortest key lifetime we accept. We never rekey, so a lifetime is honoured only if no call
/// can reach it: 2^31 packets is over a year of 20 ms audio. (SRTCP's own limit is 2^31.)
const MIN_LIFETIME_LOG2: u32 = 31;

/// Parses the key-params of an `a=crypto` line for `profile` into a master key.
///
/// Accepted: `inline:KEY_SALT`, optionally followed by `|LIFETIME` where the lifetime is
/// `2^N` or decimal and at least 2^31. Refused with [`SrtpError::SdesUnsupported`]: an MKI
/// (`|1:4`) since we do not put MKIs in packets, several keys (`;`), shorter lifetimes.
pub fn parse_sdes_inline(profile: SrtpProfile, key_params: &str) -> Result<MasterKey, SrtpError> {
    let params = key_params.trim();
    if params.contains(';') {
        return Err(SrtpError::SdesUnsupported(
            "several key-params (needs MKI, which is not supported)",
        ));
    }
    let inline = params
        .get(..7)
        .filter(|m| m.eq_ignore_ascii_case("inline:"))
        .and_then(|_| params.get(7..))
        .ok_or(SrtpError::SdesMalformed("key method is not `inline:`"))?;
    let mut fields = inline.split('|');
    let key_salt = fields.next().unwrap_or_default();
    // An MKI field is the one with a colon (`value:length`); say so before judging the rest.
    if fields.clone().any(|f| f.contains(':')) {
        return Err(SrtpError::SdesUnsupported("MKI in key-params"));
    }
    let mut seen_lifetime = false;
    for field in fields {
        if seen_lifetime {
            return Err(SrtpError::SdesMalformed("more than one lifetime"));
        }
        check_lifetime(field)?;
        seen_lifetime = true;
    }

    let bytes = LENIENT
        .decode(key_salt)
        .map_err(|_| SrtpError::SdesMalformed("key||salt is not valid base64"))?;
    if bytes.len() != profile.key_len() + profile.salt_len() {
        return Err(SrtpError::BadKeyLength);
    }
    let (key, salt) = bytes.split_at(profile.key_len());
    Ok(MasterKey {
        profile,
        key: key.to_vec(),
        salt: salt.to_vec(),
    })
}

fn check_lifetime(field: &str) -> Result<(), SrtpError> {
    let malformed = SrtpError::SdesMalformed("lifetime is neither 2^N nor a decimal count");
    let long_enough = match field.strip_prefix("2^") {
        Some(exp) => exp.parse::<u32>().map_err(|_| malformed)? >= MIN_LIFETIME_LOG2,
        None => field.parse::<u128>().map_err(|_| malformed)? >= 1 << MIN_LIFETIME_LOG2,
    };
    if long_enough {
        Ok(())
    } else {
        Err(SrtpError::SdesUnsupported(
            "key lifetime below 2^31 packets (we do not rekey)",
        ))
    }
}

/// The key-params for `key`: `inline:` and the padded base64 of key || salt, no lifetime or MKI.
pub fn sdes_inline(key: &MasterKey) -> String {
    let mut bytes = Vec::with_capacity(key.key.len() + key.salt.len());
    bytes.extend_from_slice(&key.key);
    bytes.extend_from_slice(&key.salt);
    format!("inline:{}", STANDARD.encode(bytes))
}

/// A fresh master key and salt for `profile` from the thread-local CSPRNG (seeded by the OS).
pub fn random_master_key(profile: SrtpProfile) -> MasterKey {
    let mut key = vec![0u8; profile.key_len()];
    let mut salt = vec![0u8; profile.salt_len()];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut salt);
    MasterKey { profile, key, salt }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: SrtpProfile = SrtpProfile::Aes128CmHmacSha1_80;

    #[test]
    fn parses_rfc4568_example_key() {
        // The key of RFC 4568 §10's example offer.
        let k = parse_sdes_inline(
            CM,
            "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4",
        );
        assert_eq!(k, Err(SrtpError::SdesUnsupported("MKI in key-params")));
        let k =
            parse_sdes_inline(CM, "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^31").unwrap();
        assert_eq!(k.key.len(), 16);
        assert_eq!(k.salt.len(), 14);
        assert_eq!(&k.key[..4], &[0x3d, 0x2d, 0x6e, 0x40]);
    }

    #[test]
    fn round_trips_every_profile() {
        for profile in SrtpProfile::ALL {
            let key = random_master_key(profile);
            assert_eq!(key.key.len(), profile.key_len());
            assert_eq!(key.salt.len(), profile.salt_len());
            let text = sdes_inline(&key);
            assert!(text.starts_with("inline:"));
            assert_eq!(parse_sdes_inline(profile, &text), Ok(key.clone()));
            // Unpadded base64 as some peers send it for the AEAD profiles.
            let unpadded = text.trim_end_matches('=');
            assert_eq!(parse_sdes_inline(profile, unpadded), Ok(key));
        }
    }

    #[test]
    fn lifetimes() {
        let b64 = sdes_inline(&random_master_key(CM));
        for ok in ["|2^31", "|2^48", "|2147483648", "|281474976710656"] {
            assert!(parse_sdes_inline(CM, &format!("{b64}{ok}")).is_ok(), "{ok}");
        }
        for short in ["|2^20", "|2147483647", "|1000"] {
            assert!(
                matches!(
                    parse_sdes_inline(CM, &format!("{b64}{short}")),
                    Err(SrtpError::SdesUnsupported(_))
                ),
                "{short}"
            );
        }
        for bad in ["|2^", "|forever", "|2^31|2^31"] {
            assert!(
                matches!(
                    parse_sdes_inline(CM, &format!("{b64}{bad}")),
                    Err(SrtpError::SdesMalformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_wrong_method_length_and_multiple_keys() {
        let b64 = sdes_inline(&random_master_key(CM));
        assert!(matches!(
            parse_sdes_inline(CM, &b64.replace("inline:", "uri:")),
            Err(SrtpError::SdesMalformed(_))
        ));
        assert!(matches!(
            parse_sdes_inline(CM, &format!("{b64};{b64}")),
            Err(SrtpError::SdesUnsupported(_))
        ));
        assert_eq!(
            parse_sdes_inline(SrtpProfile::AeadAes128Gcm, &b64),
            Err(SrtpError::BadKeyLength)
        );
        assert!(matches!(
            parse_sdes_inline(CM, "inline:not*base64"),
            Err(SrtpError::SdesMalformed(_))
        ));
        assert!(parse_sdes_inline(CM, "").is_err());
        assert!(parse_sdes_inline(CM, "inline:").is_err());
    }
}
