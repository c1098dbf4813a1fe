//! Client tokens: JWTs with `sub` (the user), `aud` (`AUDIENCE`), `iat`, `exp` and an
//! optional `did` (the device the token is bound to).
//!
//! Two ways to sign, both accepted by one [`Verifier`]:
//! - HS256 with the secret in `<data>/jwt-secret` ([`Secret`]), shared with the business
//!   backend (or used by `roam token` in development);
//! - EdDSA (Ed25519) or ES256 (P-256) with the backend's private key, Roam holding only the
//!   public key (`auth.public_key` in the configuration).
//!
//! Expiry is checked against a clock the caller passes in, so it is tested without sleeping.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::secret_file::{self, SecretFileError};

/// The `aud` every Roam client token carries.
pub(crate) const AUDIENCE: &str = "roam";
/// File name of the HS256 secret inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";
/// Bytes of a generated secret.
const SECRET_LEN: usize = 32;

/// The claims of a client token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The audience, `AUDIENCE`.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch (optional in tokens from other issuers).
    #[serde(default)]
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The device the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
}

/// Why a token, or a key to check tokens with, was refused.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The HS256 secret file could not be used.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// The public key file could not be read or parsed.
    #[error("cannot use public key {path}: {detail}")]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The user id is empty.
    #[error("a token needs a non-empty user")]
    EmptyUser,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is still in the future.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// The token is valid for longer than the configured maximum.
    #[error("token lifetime exceeds the maximum of {max_secs} s")]
    TooLong {
        /// The configured maximum, seconds.
        max_secs: u64,
    },
    /// The token is for another audience.
    #[error("token audience is not the expected one")]
    WrongAudience,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token is signed with an algorithm this server does not accept.
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// The token is bound to another device than the one connecting.
    #[error("token is bound to another device")]
    WrongDevice,
    /// The token is not a well-formed JWT with the required claims.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// No token was given (an empty `token` in AUTH).
    #[error("token is missing: AUTH must carry a client token")]
    Missing,
}

/// The HS256 secret that signs and verifies client tokens.
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from raw bytes (e.g. shared with a business backend through configuration).
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Secret { key }
    }

    /// The secret in `<data>/jwt-secret`, generated if absent (see [`secret_file`]).
    pub fn load_or_create(data_dir: &Path) -> Result<Self, AuthError> {
        let key = secret_file::load_or_create(&data_dir.join(SECRET_FILE), SECRET_LEN)?;
        Ok(Secret { key })
    }

    /// Mints a token for `user` (bound to `device` if given) valid for `ttl_secs` from `now`
    /// (seconds since the Unix epoch).
    pub fn mint(
        &self,
        user: &str,
        device: Option<&str>,
        ttl_secs: u64,
        now: u64,
    ) -> Result<String, AuthError> {
        if user.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        let claims = Claims {
            sub: user.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            did: device.map(str::to_owned),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

/// Checks client tokens: HS256 with the secret, and optionally EdDSA or ES256 with a public
/// key (HS256 is then refused unless [`Verifier::accept_hs256`] says otherwise).
pub struct Verifier {
    hs256: DecodingKey,
    /// Whether HS256 tokens are accepted (`None`: only while no public key is configured).
    accept_hs256: Option<bool>,
    public: Option<(Algorithm, DecodingKey)>,
    /// Longest accepted lifetime (`exp` minus `iat`, or minus now when `iat` is absent or
    /// in the future), seconds.
    max_lifetime: Option<u64>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .field("hs256", &self.hs256_accepted())
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// The asymmetric algorithms a public key may be configured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublicKeyAlgorithm {
    /// Ed25519 signatures.
    EdDSA,
    /// ECDSA over P-256 with SHA-256.
    ES256,
}

impl Verifier {
    /// A verifier for tokens signed with `secret` only.
    pub fn new(secret: &Secret) -> Self {
        Verifier {
            hs256: DecodingKey::from_secret(&secret.key),
            accept_hs256: None,
            public: None,
            max_lifetime: None,
        }
    }

    /// Whether HS256 tokens (signed with the data dir's secret) are accepted: `None` keeps
    /// the default — yes without a public key, no with one.
    pub fn accept_hs256(mut self, accept: Option<bool>) -> Self {
        self.accept_hs256 = accept;
        self
    }

    /// Refuses tokens valid for longer than `max_secs` (`None`: no maximum).
    pub fn max_lifetime(mut self, max_secs: Option<u64>) -> Self {
        self.max_lifetime = max_secs;
        self
    }

    fn hs256_accepted(&self) -> bool {
        self.accept_hs256.unwrap_or(self.public.is_none())
    }

    /// Also accepts tokens signed with the private half of the PEM public key in `path`.
    pub fn with_public_key(
        mut self,
        algorithm: PublicKeyAlgorithm,
        path: &Path,
    ) -> Result<Self, AuthError> {
        let err = |detail: String| AuthError::PublicKey {
            path: path.to_owned(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let key = match algorithm {
            PublicKeyAlgorithm::EdDSA => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
            PublicKeyAlgorithm::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
        };
        let decoding = key.1.map_err(|e| err(e.to_string()))?;
        self.public = Some((key.0, decoding));
        Ok(self)
    }

    /// Verifies a token's signature, audience, expiry and `nbf` at `now` (seconds since the
    /// Unix epoch, no leeway), its lifetime against the maximum, and, when the token is bound
    /// to a device, that it is `device`.
    pub fn verify(&self, token: &str, device: &str, now: u64) -> Result<Claims, AuthError> {
        if token.trim().is_empty() {
            return Err(AuthError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = match (&self.public, header.alg) {
            (_, Algorithm::HS256) if self.hs256_accepted() => &self.hs256,
            (Some((alg, key)), got) if *alg == got => key,
            (_, got) => return Err(AuthError::Algorithm(got)),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        // Expiry is checked below against the caller's clock.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    _ => AuthError::Malformed(e.to_string()),
                }
            })?
            .claims;
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(max_secs) = self.max_lifetime {
            let from = if claims.iat == 0 {
                now
            } else {
                claims.iat.min(now)
            };
            if claims.exp.saturating_sub(from) > max_secs {
                return Err(AuthError::TooLong { max_secs });
            }
        }
        if claims.sub.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        if claims.did.as_deref().is_some_and(|did| did != device) {
            return Err(AuthError::WrongDevice);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;

    #[test]
    fn minted_tokens_verify_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::load_or_create(dir.path()).unwrap();
        let verifier = Verifier::new(&Secret::load_or_create(dir.path()).unwrap());
        let token = secret.mint("alice", Some("phone"), 60, NOW).unwrap();
        let claims = verifier.verify(&token, "phone", NOW + 59).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.did.as_deref(), Some("phone"));
        assert!(matches!(
            verifier.verify(&token, "phone", NOW + 60),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            verifier.verify(&token, "laptop", NOW),
            Err(AuthError::WrongDevice)
        ));
        let unbound = secret.mint("alice", None, 60, NOW).unwrap();
        assert!(verifier.verify(&unbound, "any-device", NOW).is_ok());
    }

    #[test]
    fn foreign_tampered_and_malformed_tokens_are_refused() {
        let mine = Verifier::new(&Secret::from_bytes(vec![1; 32]));
        let theirs = Secret::from_bytes(vec![2; 32]);
        let token = theirs.mint("mallory", None, 60, NOW).unwrap();
        assert!(matches!(
            mine.verify(&token, "d", NOW),
            Err(AuthError::BadSignature)
        ));
        assert!(matches!(
            mine.verify("not.a.jwt", "d", NOW),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(mine.verify("", "d", NOW), Err(AuthError::Missing)));

        let other_aud = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "eve".into(),
                aud: "elsewhere".into(),
                iat: NOW,
                exp: NOW + 60,
                nbf: None,
                did: None,
            },
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        assert!(matches!(
            mine.verify(&other_aud, "d", NOW),
            Err(AuthError::WrongAudience)
        ));
        assert!(matches!(
            theirs.mint("", None, 60, NOW),
            Err(AuthError::EmptyUser)
        ));
    }

    #[test]
    fn ed25519_tokens_verify_with_the_configured_public_key_only() {
        // A fixed Ed25519 key pair (PKCS#8 private, SPKI public; `openssl genpkey -algorithm
        // ed25519`), for tests only.
        const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIEv5EpHdA3GgTS8jCEgkRneCHE1Lqp9lSmGiRnWTgr51\n-----END PRIVATE KEY-----\n";
        const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAnLVtrlkLAA67R3ioQv3N24xXreqFmtzf/v7F4M90XB8=\n-----END PUBLIC KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("pub.pem");
        std::fs::write(&public, PUBLIC).unwrap();
        let secret = Secret::from_bytes(vec![1; 32]);
        let claims = Claims {
            sub: "carol".into(),
            aud: AUDIENCE.into(),
            iat: NOW,
            exp: NOW + 60,
            nbf: None,
            did: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        let hs_only = Verifier::new(&secret);
        assert!(matches!(
            hs_only.verify(&token, "d", NOW),
            Err(AuthError::Algorithm(Algorithm::EdDSA))
        ));
        let with_pk = Verifier::new(&secret)
            .with_public_key(PublicKeyAlgorithm::EdDSA, &public)
            .unwrap();
        assert_eq!(with_pk.verify(&token, "d", NOW).unwrap().sub, "carol");
        // HS256 tokens are refused next to a public key, unless configured.
        let hs = secret.mint("dave", None, 60, NOW).unwrap();
        assert!(matches!(
            with_pk.verify(&hs, "d", NOW),
            Err(AuthError::Algorithm(Algorithm::HS256))
        ));
        let both = Verifier::new(&secret)
            .accept_hs256(Some(true))
            .with_public_key(PublicKeyAlgorithm::EdDSA, &public)
            .unwrap();
        assert_eq!(both.verify(&hs, "d", NOW).unwrap().sub, "dave");
        assert_eq!(both.verify(&token, "d", NOW).unwrap().sub, "carol");
        let err = Verifier::new(&secret)
            .with_public_key(PublicKeyAlgorithm::ES256, &public)
            .unwrap_err();
        assert!(matches!(err, AuthError::PublicKey { .. }), "{err}");
    }

    #[test]
    fn es256_tokens_verify_with_the_configured_public_key_only() {
        // A fixed P-256 key pair (PKCS#8 private, SPKI public; `openssl genpkey -algorithm EC
        // -pkeyopt ec_paramgen_curve:P-256`), for tests only.
        const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYsEw0peh7Ml6bBDJ\nBq7uZEF7oyslxjIa2e1vBJdoA5ehRANCAATRvs8fAHnFzkaRtBkIGg40c5RNJkh1\noXSu/5YpYuLAlUpSeUUl/xtxBlVtMAXl6jESKwoHL+ySQKeXvNz/BveX\n-----END PRIVATE KEY-----\n";
        const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0b7PHwB5xc5GkbQZCBoONHOUTSZI\ndaF0rv+WKWLiwJVKUnlFJf8bcQZVbTAF5eoxEisKBy/skkCnl7zc/wb3lw==\n-----END PUBLIC KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("pub.pem");
        std::fs::write(&public, PUBLIC).unwrap();
        let secret = Secret::from_bytes(vec![1; 32]);
        let claims = |exp: u64, aud: &str| Claims {
            sub: "erin".into(),
            aud: aud.into(),
            iat: NOW,
            exp,
            nbf: None,
            did: Some("phone".into()),
        };
        let key = EncodingKey::from_ec_pem(PRIVATE.as_bytes()).unwrap();
        let sign =
            |c: &Claims| jsonwebtoken::encode(&Header::new(Algorithm::ES256), c, &key).unwrap();
        let token = sign(&claims(NOW + 60, AUDIENCE));
        assert!(matches!(
            Verifier::new(&secret).verify(&token, "phone", NOW),
            Err(AuthError::Algorithm(Algorithm::ES256))
        ));
        let verifier = Verifier::new(&secret)
            .with_public_key(PublicKeyAlgorithm::ES256, &public)
            .unwrap();
        assert_eq!(verifier.verify(&token, "phone", NOW).unwrap().sub, "erin");
        assert!(matches!(
            verifier.verify(&token, "tablet", NOW),
            Err(AuthError::WrongDevice)
        ));
        assert!(matches!(
            verifier.verify(&sign(&claims(NOW - 1, AUDIENCE)), "phone", NOW),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            verifier.verify(&sign(&claims(NOW + 60, "elsewhere")), "phone", NOW),
            Err(AuthError::WrongAudience)
        ));
        // A signature by another key fails; so does an Ed25519 key configured as ES256.
        let mut forged = token.clone();
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        assert!(matches!(
            verifier.verify(&forged, "phone", NOW),
            Err(AuthError::BadSignature | AuthError::Malformed(_))
        ));
    }

    #[test]
    fn a_missing_token_is_named_as_missing() {
        let v = Verifier::new(&Secret::from_bytes(vec![1; 32]));
        assert!(matches!(v.verify("", "d", NOW), Err(AuthError::Missing)));
        assert!(matches!(v.verify("  ", "d", NOW), Err(AuthError::Missing)));
    }

    fn hs256(claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let v = Verifier::new(&Secret::from_bytes(vec![1; 32]));
        let claims = Claims {
            sub: "frank".into(),
            aud: AUDIENCE.into(),
            iat: NOW,
            exp: NOW + 600,
            nbf: Some(NOW + 100),
            did: None,
        };
        let token = hs256(&claims);
        assert!(matches!(
            v.verify(&token, "d", NOW + 99),
            Err(AuthError::NotYetValid)
        ));
        assert_eq!(v.verify(&token, "d", NOW + 100).unwrap().sub, "frank");
    }

    #[test]
    fn a_token_valid_for_longer_than_the_maximum_is_refused() {
        let v = Verifier::new(&Secret::from_bytes(vec![1; 32])).max_lifetime(Some(3600));
        let claims = |iat: u64, exp: u64| Claims {
            sub: "gina".into(),
            aud: AUDIENCE.into(),
            iat,
            exp,
            nbf: None,
            did: None,
        };
        let ok = hs256(&claims(NOW, NOW + 3600));
        assert_eq!(v.verify(&ok, "d", NOW + 10).unwrap().sub, "gina");
        for (iat, exp) in [
            (NOW, NOW + 3601),
            // No `iat`: the lifetime left from now counts.
            (0, NOW + 3601),
            // An `iat` in the future does not shorten it.
            (NOW + 1000, NOW + 4000),
        ] {
            let token = hs256(&claims(iat, exp));
            assert!(
                matches!(
                    v.verify(&token, "d", NOW),
                    Err(AuthError::TooLong { max_secs: 3600 })
                ),
                "iat {iat} exp {exp}"
            );
        }
        let unlimited = Verifier::new(&Secret::from_bytes(vec![1; 32]));
        let long = hs256(&claims(NOW, NOW + 10 * 365 * 86_400));
        assert!(unlimited.verify(&long, "d", NOW).is_ok());
    }
}
