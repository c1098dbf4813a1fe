//! Client tokens: JWTs signed with HS256 by a secret kept in the data directory.
//!
//! A token's claims: `sub` (the user), `aud` (always [`AUDIENCE`]), `iat` and `exp` (seconds
//! since the Unix epoch) and, optionally, `did` (a device the token is bound to). The
//! business backend mints tokens with the same secret (or, in development, `roam token`);
//! the edge presents them to core at connect.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `aud` every Roam client token carries.
pub const AUDIENCE: &str = "roam";
/// File name of the HS256 secret inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";
/// Bytes of a generated secret.
const SECRET_LEN: usize = 32;

/// The claims of a client token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The audience, [`AUDIENCE`].
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// The device the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
}

/// Why a token or the secret was refused.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The secret file could not be read or created.
    #[error("cannot use token secret {path}")]
    SecretIo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The secret file is too short or not hex.
    #[error("token secret {path} is malformed: expected at least {SECRET_LEN} bytes as hex")]
    SecretMalformed {
        /// The file.
        path: PathBuf,
    },
    /// The user id is empty.
    #[error("a token needs a non-empty user")]
    EmptyUser,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token is for another audience.
    #[error("token audience is not {AUDIENCE:?}")]
    WrongAudience,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token is not a well-formed HS256 JWT with the required claims.
    #[error("token is malformed: {0}")]
    Malformed(String),
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

    /// The secret in `<data>/jwt-secret`, generated (random, hex, owner-only) if absent.
    /// Safe when several processes start on one data directory at once: one creates it, the
    /// others read it.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, AuthError> {
        let path = data_dir.join(SECRET_FILE);
        let io_err = |source| AuthError::SecretIo {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io_err)?;
        let mut key = [0u8; SECRET_LEN];
        rand::fill(&mut key);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io_err)?;
                Ok(Secret { key: key.to_vec() })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(e) => Err(io_err(e)),
        }
    }

    fn load(path: &Path) -> Result<Self, AuthError> {
        let text = fs::read_to_string(path).map_err(|source| AuthError::SecretIo {
            path: path.to_owned(),
            source,
        })?;
        let malformed = || AuthError::SecretMalformed {
            path: path.to_owned(),
        };
        let text = text.trim();
        if text.len() < SECRET_LEN * 2 || text.len() % 2 != 0 {
            return Err(malformed());
        }
        let key = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| malformed())?;
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
            did: device.map(str::to_owned),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Verifies a token's signature, audience and expiry at `now` (no leeway).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        // Expiry is checked below against the caller's clock, so it can be tested.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&self.key),
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        if data.claims.exp <= now {
            return Err(AuthError::Expired);
        }
        if data.claims.sub.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        Ok(data.claims)
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
        let token = secret.mint("alice", Some("phone"), 60, NOW).unwrap();
        let claims = secret.verify(&token, NOW + 59).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.did.as_deref(), Some("phone"));
        assert!(matches!(
            secret.verify(&token, NOW + 60),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn the_secret_file_is_shared_by_every_process_on_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secret::load_or_create(dir.path()).unwrap();
        let b = Secret::load_or_create(dir.path()).unwrap();
        let token = a.mint("bob", None, 60, NOW).unwrap();
        assert_eq!(b.verify(&token, NOW).unwrap().sub, "bob");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn foreign_tampered_and_malformed_tokens_are_refused() {
        let mine = Secret::from_bytes(vec![1; 32]);
        let theirs = Secret::from_bytes(vec![2; 32]);
        let token = theirs.mint("mallory", None, 60, NOW).unwrap();
        assert!(matches!(
            mine.verify(&token, NOW),
            Err(AuthError::BadSignature)
        ));
        assert!(matches!(
            mine.verify("not.a.jwt", NOW),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(mine.verify("", NOW), Err(AuthError::Malformed(_))));

        let other_aud = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "eve".into(),
                aud: "elsewhere".into(),
                iat: NOW,
                exp: NOW + 60,
                did: None,
            },
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        assert!(matches!(
            mine.verify(&other_aud, NOW),
            Err(AuthError::WrongAudience)
        ));
        assert!(matches!(
            mine.mint("", None, 60, NOW),
            Err(AuthError::EmptyUser)
        ));
    }

    #[test]
    fn a_malformed_secret_file_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SECRET_FILE), "short\n").unwrap();
        let err = Secret::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, AuthError::SecretMalformed { .. }), "{err}");
    }
}
