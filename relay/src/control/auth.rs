//! Bearer-token check for the `relay.v1.Relay` service.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Accepts a request when it carries `authorization: Bearer <token>` with the configured token,
/// or when no token is configured (loopback, or mTLS did the authentication).
#[derive(Clone)]
pub struct TokenCheck {
    /// SHA-256 of the expected token: comparing fixed-length digests in constant time reveals
    /// neither the token's bytes nor its length through timing.
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token or its digest.
        f.debug_struct("TokenCheck")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl TokenCheck {
    pub fn new(token: Option<&str>) -> Self {
        TokenCheck {
            expected: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    fn check(&self, header: Option<&[u8]>) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        // The scheme is case-insensitive (RFC 7235 §2.1).
        let token = match header.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
            _ => {
                return Err(Status::unauthenticated(
                    "authorization metadata must be `Bearer <token>`",
                ));
            }
        };
        let got: [u8; 32] = Sha256::digest(token).into();
        if bool::from(got.ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong token"))
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.check(header)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        let c = TokenCheck::new(Some("s3cret"));
        assert!(c.check(Some(b"Bearer s3cret")).is_ok());
        assert!(c.check(Some(b"bearer s3cret")).is_ok());
        assert!(c.check(Some(b"Bearer s3cre")).is_err());
        assert!(c.check(Some(b"Bearer s3cret ")).is_err());
        assert!(c.check(Some(b"Basic s3cret")).is_err());
        assert!(c.check(Some(b"Bearer")).is_err());
        assert!(c.check(None).is_err());
        assert!(TokenCheck::new(None).check(None).is_ok());
    }
}
