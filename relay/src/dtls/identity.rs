//! The relay's DTLS certificate: ECDSA P-256, self-signed, identified by its SHA-256
//! fingerprint in SDP. One per process (or shard), shared by every call through an `Arc`.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::{DtlsError, Fingerprint};

/// A certificate and its private key, plus the fingerprint we advertise.
pub struct DtlsIdentity {
    certificate: dimpl::DtlsCertificate,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for DtlsIdentity {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint.to_sdp_value())
            .finish()
    }
}

impl DtlsIdentity {
    /// Generates a fresh key pair and self-signed certificate.
    ///
    /// ECDSA P-256 because that is what WebRTC peers (Meta included) expect and what dimpl
    /// signs with; RSA is not supported by dimpl at all.
    pub fn generate() -> Result<Self, DtlsError> {
        let gen_err = |e: rcgen::Error| DtlsError::Certificate(e.to_string());
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "relay");
        params.distinguished_name = dn;
        // Browsers (Firefox notably) reject two certificates from one issuer with the same
        // serial, so every certificate gets a random one. The top bit is cleared to keep the
        // DER INTEGER positive without a padding byte.
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let cert = params.self_signed(&key_pair).map_err(gen_err)?;
        let der = cert.der().to_vec();
        Ok(DtlsIdentity {
            fingerprint: Fingerprint::sha256_of(&der),
            certificate: dimpl::DtlsCertificate {
                certificate: der,
                // PKCS#8, which dimpl's rust-crypto provider parses.
                private_key: key_pair.serialize_der(),
            },
        })
    }

    /// SHA-256 of the certificate's DER encoding, for `a=fingerprint`.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    pub fn certificate(&self) -> &dimpl::DtlsCertificate {
        &self.certificate
    }
}
