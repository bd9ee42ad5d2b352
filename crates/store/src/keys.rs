//! The audit log's keys: the server's Ed25519 signing key ([`AuditKey`]),
//! public keys ([`PublicKey`]) and the set of public keys a verifier trusts
//! ([`Keyring`]).
//!
//! Files: a signing key is a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`,
//! what `openssl genpkey -algorithm ed25519` and `loraflow audit keygen`
//! write); a public key is an SPKI PEM file (`-----BEGIN PUBLIC KEY-----`,
//! `openssl pkey -pubout`) or the key's 32 bytes in hex.
//!
//! A key's id is derived from its public key (`ed25519:` and the first 16
//! hex digits of its SHA-256), so that an auditor who holds only the public
//! key can tell which events it signed, and two keys never share an id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why a key could not be read, written or parsed. Configuration errors:
/// they stop the engine or the command before anything is written; a gRPC
/// caller never sees one (`INTERNAL` if it ever did).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read. Fix the path or its permissions.
    #[error("cannot read the audit key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be created. Fix the folder or its permissions.
    #[error("cannot write the audit key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not a key of the expected form.
    #[error("{what} is not {expected}: {reason}")]
    Invalid {
        what: String,
        expected: &'static str,
        reason: String,
    },
}

const SIGNING_FORM: &str = "an Ed25519 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----; make one with `loraflow audit keygen --out FILE`)";
const PUBLIC_FORM: &str =
    "an Ed25519 public key (SPKI PEM, -----BEGIN PUBLIC KEY-----, or 64 hex digits)";

/// A public key that verifies audit signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// `ed25519:` and the first 16 hex digits of SHA-256 of the key's bytes.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("ed25519:{}", &hex::encode(digest)[..16])
    }

    /// The key's 32 bytes in hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The key as SPKI PEM.
    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 public key encodes")
    }

    /// Parse SPKI PEM or 64 hex digits; `what` names the source in errors.
    pub fn parse(text: &str, what: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let invalid = |reason: String| KeyError::Invalid {
            what: what.to_owned(),
            expected: PUBLIC_FORM,
            reason,
        };
        if text.starts_with("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(text)
                .map(Self)
                .map_err(|e| invalid(e.to_string()));
        }
        let bytes: [u8; 32] = hex::decode(text)
            .map_err(|e| invalid(format!("not PEM, and not hex: {e}")))?
            .try_into()
            .map_err(|b: Vec<u8>| invalid(format!("{} bytes, not 32", b.len())))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Read a public key file (PEM or hex).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Whether `sig_hex` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], sig_hex: &str) -> bool {
        let Ok(bytes) = hex::decode(sig_hex) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        self.0
            .verify_strict(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// The server's signing key. Cheap to clone; the secret is never printed.
#[derive(Clone)]
pub struct AuditKey {
    secret: Arc<SigningKey>,
    public: PublicKey,
    key_id: Arc<str>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.key_id)
    }
}

impl AuditKey {
    fn from_signing(secret: SigningKey) -> Self {
        let public = PublicKey(secret.verifying_key());
        Self {
            key_id: public.key_id().into(),
            secret: Arc::new(secret),
            public,
        }
    }

    /// A new random key.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// Parse PKCS#8 PEM; `what` names the source in errors.
    pub fn from_pem(text: &str, what: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(text.trim())
            .map(Self::from_signing)
            .map_err(|e| KeyError::Invalid {
                what: what.to_owned(),
                expected: SIGNING_FORM,
                reason: e.to_string(),
            })
    }

    /// The key as PKCS#8 PEM (secret: write it to a file only the server reads).
    pub fn to_pem(&self) -> String {
        self.secret
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 key encodes")
            .to_string()
    }

    /// Read a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// Write the key to a new file, readable by its owner only; an existing
    /// file is an error (a key is never overwritten).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let write = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write)?;
        file.write_all(self.to_pem().as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)
    }

    /// The key in `path`, or a new one written there if the file does not
    /// exist (`true` when it was created). Two processes racing to create it
    /// end up with the same key: the loser reads the winner's file.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| KeyError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        let key = Self::generate();
        match key.write_new(path) {
            Ok(()) => Ok((key, true)),
            Err(KeyError::Write { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok((Self::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The signature of `message`, in hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.secret.sign(message).to_bytes())
    }
}

/// The public keys a verifier trusts, by key id. Old keys stay in it after
/// a rotation so that the events they signed still verify.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, PublicKey>,
}

impl Keyring {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut ring = Self::default();
        for k in keys {
            ring.add(k);
        }
        ring
    }

    pub fn add(&mut self, key: PublicKey) {
        self.keys.insert(key.key_id(), key);
    }

    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.keys.get(key_id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids, sorted.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether the key named `key_id` is known and signed `message` with `sig_hex`.
    pub(crate) fn check(&self, key_id: &str, message: &[u8], sig_hex: &str) -> SigCheck {
        match self.get(key_id) {
            None => SigCheck::UnknownKey,
            Some(k) if k.verifies(message, sig_hex) => SigCheck::Valid,
            Some(_) => SigCheck::Invalid,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigCheck {
    Valid,
    Invalid,
    UnknownKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/audit.key");
        let (key, created) = AuditKey::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = AuditKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.key_id(), key.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(key.write_new(&path).is_err(), "a key is never overwritten");

        let sig = key.sign(b"m");
        let public = PublicKey::parse(&key.public_key().to_pem(), "pem").unwrap();
        assert!(public.verifies(b"m", &sig));
        assert!(!public.verifies(b"n", &sig));
        let hex = PublicKey::parse(&key.public_key().to_hex(), "hex").unwrap();
        assert_eq!(hex.key_id(), key.key_id());
        assert!(key.key_id().starts_with("ed25519:") && key.key_id().len() == 24);
    }

    #[test]
    fn bad_key_text_is_named_in_the_error() {
        let err = AuditKey::from_pem("hello", "signing_key x.pem").unwrap_err();
        assert!(err.to_string().contains("signing_key x.pem"), "{err}");
        assert!(err.to_string().contains("keygen"), "{err}");
        let err = PublicKey::parse("abcd", "trusted_keys[0]").unwrap_err();
        assert!(err.to_string().contains("2 bytes, not 32"), "{err}");
    }
}
