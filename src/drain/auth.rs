//! The credential GitLab's mail_room API checks: the shared secret read from
//! GitLab's `secret_file`, and the HS256 JWT sent with every POST in the
//! `Gitlab-Mailroom-Api-Request` header.
//!
//! Must not: log, print or put into an error the secret or a token; touch
//! the spool; talk to the network.
//! Fails: with an `AuthError` naming the file and what is wrong with it
//! (never its content). The drain treats that like a 401: a configuration
//! problem, the message stays queued.
//!
//! The contract is GitLab's `Gitlab::MailRoom::Authenticator`
//! (`lib/gitlab/mail_room/authenticator.rb`) and `Gitlab::JwtAuthenticatable`
//! (`lib/gitlab/jwt_authenticatable.rb`): the file holds the standard,
//! padded base64 of exactly 32 bytes, with at most one trailing newline
//! (Ruby's `chomp`: `\n`, `\r\n` or `\r`); the key is the decoded bytes. The
//! token is HS256 with the JOSE header `{"alg":"HS256"}` and the claims
//! `iss: "gitlab-mailroom"`, `iat` and `nonce`. GitLab refuses an `iat` older
//! than 5 minutes or in the future (no leeway), so tokens are made per
//! request, never cached.
//!
//! The token is built here rather than by a JWT library: one fixed header,
//! three claims and HMAC-SHA256 (RFC 7515 §3.1 compact serialization,
//! RFC 7518 §3.2 HS256, base64url without padding). The tests verify it
//! with the `jsonwebtoken` crate, as GitLab's `JWT.decode` would.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The request header that carries the token (`INTERNAL_API_REQUEST_HEADER`).
pub const HEADER: &str = "Gitlab-Mailroom-Api-Request";
/// The issuer GitLab requires (`:jwt_issuer:` in mail_room.yml).
pub const ISSUER: &str = "gitlab-mailroom";
/// GitLab's `SECRET_LENGTH`: anything else is a configuration error there.
pub const SECRET_LEN: usize = 32;
/// A secret file larger than this is not one (44 base64 characters plus a
/// newline is the real size); refuse before reading a huge file.
const MAX_FILE_BYTES: u64 = 1024;
/// Seconds `iat` is set in the past. GitLab refuses a token issued in the
/// future with no leeway, so a GitLab host whose clock is a little behind
/// ours would answer 401; five seconds out of the five-minute window is
/// cheap insurance.
pub const IAT_BACKDATE_SECS: u64 = 5;

/// What is wrong with a secret file, or with signing.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// The route has no `secret_file` in the configuration.
    NotConfigured,
    /// The file cannot be read.
    Read { path: PathBuf, err: io::Error },
    /// The content is not strict base64 (after removing one newline).
    NotBase64 { path: PathBuf },
    /// The decoded secret is not 32 bytes.
    WrongLength { path: PathBuf, len: usize },
    /// The token could not be built (should not happen: HMAC takes any
    /// key length and the claims always serialize).
    Sign(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::NotConfigured => write!(
                f,
                "no secret_file configured for this route (hint: set secret_file to a copy \
                 of GitLab's secret_file for this mailbox)"
            ),
            AuthError::Read { path, err } => {
                write!(f, "cannot read secret file {}: {err}", path.display())
            }
            AuthError::NotBase64 { path } => write!(
                f,
                "secret file {} is not standard base64 (hint: GitLab writes \
                 Base64.strict_encode64 of 32 random bytes, optionally with one newline)",
                path.display()
            ),
            AuthError::WrongLength { path, len } => write!(
                f,
                "secret file {} decodes to {len} bytes, GitLab requires {SECRET_LEN}",
                path.display()
            ),
            AuthError::Sign(why) => write!(f, "cannot sign the token: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// The JOSE header mail_room sends: only the algorithm, no `typ`.
const JOSE_HEADER: &[u8] = br#"{"alg":"HS256"}"#;

/// GitLab's shared secret for one mailbox. Debug output hides it.
#[derive(Clone)]
pub struct Secret {
    key: [u8; SECRET_LEN],
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
    nonce: &'a str,
}

impl Secret {
    /// Reads the secret the way GitLab's `read_secret` does.
    ///
    /// # Errors
    /// `Read` when the file cannot be opened or read (or is larger than any
    /// secret file), `NotBase64` or `WrongLength` when GitLab would refuse
    /// it too.
    pub fn load(path: Option<&Path>) -> Result<Secret, AuthError> {
        let path = path.ok_or(AuthError::NotConfigured)?;
        let read_err = |err| AuthError::Read {
            path: path.to_path_buf(),
            err,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = Vec::with_capacity(64);
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(read_err(io::Error::new(
                io::ErrorKind::InvalidData,
                "larger than any secret file",
            )));
        }
        Secret::decode(&text).map_err(|e| match e {
            DecodeError::NotBase64 => AuthError::NotBase64 {
                path: path.to_path_buf(),
            },
            DecodeError::WrongLength(len) => AuthError::WrongLength {
                path: path.to_path_buf(),
                len,
            },
        })
    }

    /// Decodes the content of a secret file: Ruby's `chomp` (one `\r\n`,
    /// `\n` or `\r`), then `Base64.strict_decode64` (padding required, no
    /// whitespace), then exactly 32 bytes.
    fn decode(text: &[u8]) -> Result<Secret, DecodeError> {
        let text = text
            .strip_suffix(b"\r\n")
            .or_else(|| text.strip_suffix(b"\n"))
            .or_else(|| text.strip_suffix(b"\r"))
            .unwrap_or(text);
        let bytes = STANDARD.decode(text).map_err(|_| DecodeError::NotBase64)?;
        let key: [u8; SECRET_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| DecodeError::WrongLength(bytes.len()))?;
        Ok(Secret { key })
    }

    /// Signs a token issued at `now` (seconds since the epoch; backdated by
    /// [`IAT_BACKDATE_SECS`]) with a fresh `nonce`: `BASE64URL(header) "."
    /// BASE64URL(claims) "." BASE64URL(HMAC-SHA256(key, the first two))`.
    ///
    /// # Errors
    /// `Sign` if the claims do not serialize or HMAC refuses the key, neither
    /// of which happens with a 32-byte key and these claims.
    pub fn token(&self, now: u64, nonce: &str) -> Result<String, AuthError> {
        let claims = Claims {
            iss: ISSUER,
            iat: now.saturating_sub(IAT_BACKDATE_SECS),
            nonce,
        };
        let claims = serde_json::to_vec(&claims).map_err(|e| AuthError::Sign(e.to_string()))?;
        let mut token = URL_SAFE_NO_PAD.encode(JOSE_HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .map_err(|e| AuthError::Sign(e.to_string()))?;
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum DecodeError {
    NotBase64,
    WrongLength(usize),
}

/// A nonce like mail_room's `SecureRandom.hex(12)`: 24 hex characters.
pub fn nonce(random: [u8; 12]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    const KEY: [u8; 32] = [7u8; 32];

    fn encoded() -> String {
        STANDARD.encode(KEY)
    }

    #[test]
    fn secret_file_content_is_read_like_ruby_chomp_and_strict_decode64() {
        let b64 = encoded();
        for ok in [
            b64.clone(),
            format!("{b64}\n"),
            format!("{b64}\r\n"),
            format!("{b64}\r"),
        ] {
            assert_eq!(
                Secret::decode(ok.as_bytes()).map(|s| s.key),
                Ok(KEY),
                "{ok:?}"
            );
        }
        for bad in [
            format!("{b64}\n\n"),
            format!(" {b64}"),
            format!("{b64} "),
            b64.trim_end_matches('=').to_string(),
            format!("_{}", &b64[1..]),
        ] {
            assert_eq!(
                Secret::decode(bad.as_bytes()).map(|s| s.key),
                Err(DecodeError::NotBase64),
                "{bad:?}"
            );
        }
        assert_eq!(
            Secret::decode(b"\n").map(|s| s.key),
            Err(DecodeError::WrongLength(0))
        );
        let short = STANDARD.encode([1u8; 16]);
        assert_eq!(
            Secret::decode(short.as_bytes()).map(|s| s.key),
            Err(DecodeError::WrongLength(16))
        );
    }

    #[test]
    fn token_is_what_gitlab_verifies() {
        let secret = Secret::decode(encoded().as_bytes()).unwrap();
        let nonce = nonce([0xab; 12]);
        assert_eq!(nonce.len(), 24);
        let token = secret.token(1_700_000_000, &nonce).unwrap();

        // The JOSE header is exactly mail_room's.
        let head = token.split('.').next().unwrap();
        let head = URL_SAFE_NO_PAD.decode(head).unwrap();
        assert_eq!(head, br#"{"alg":"HS256"}"#);

        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["iss", "iat"]);
        v.validate_exp = false;
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_secret(&KEY), &v)
                .unwrap();
        assert_eq!(data.claims["iss"], ISSUER);
        assert_eq!(data.claims["nonce"], nonce.as_str());
        assert_eq!(data.claims["iat"], 1_700_000_000 - IAT_BACKDATE_SECS);

        // Byte for byte what jsonwebtoken signs for the same header and
        // claims (what the drain sent before it signed by itself).
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.typ = None;
        let claims = Claims {
            iss: ISSUER,
            iat: 1_700_000_000 - IAT_BACKDATE_SECS,
            nonce: &nonce,
        };
        let library = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&KEY),
        )
        .unwrap();
        assert_eq!(token, library);

        // Another key does not verify it.
        let other = DecodingKey::from_secret(&[8u8; 32]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &other, &v).is_err());
    }

    #[test]
    fn errors_name_the_file_but_never_the_secret() {
        let dir = std::env::temp_dir().join(format!("mailpipe-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "not base64!\n").unwrap();
        let e = Secret::load(Some(&path)).unwrap_err();
        assert!(e.to_string().contains("not standard base64"), "{e}");
        assert!(!e.to_string().contains("not base64!"), "{e}");
        std::fs::write(&path, format!("{}\n", encoded())).unwrap();
        let s = Secret::load(Some(&path)).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(matches!(
            Secret::load(Some(&dir.join("missing"))),
            Err(AuthError::Read { .. })
        ));
        assert!(matches!(Secret::load(None), Err(AuthError::NotConfigured)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
