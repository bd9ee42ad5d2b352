//! The `[audit]` section of `loraflow.toml` as keys: the signing key and
//! the public keys trusted besides it.

use loraflow_store::{AuditKey, Keyring, PublicKey};

use crate::config::AuditConfig;

/// The keys an `[audit]` section names.
#[derive(Debug, Clone, Default)]
pub struct ConfiguredKeys {
    pub signing: Option<AuditKey>,
    pub trusted: Vec<PublicKey>,
}

impl ConfiguredKeys {
    /// The signing key's public key and the trusted ones.
    pub fn keyring(&self) -> Keyring {
        let mut ring = Keyring::new(self.trusted.iter().copied());
        if let Some(k) = &self.signing {
            ring.add(k.public_key());
        }
        ring
    }
}

/// Read the files `config` names. The error names the field
/// (`audit.signing_key`, `audit.trusted_keys[i]`), what was given and the
/// form expected.
pub fn configured_keys(config: &AuditConfig) -> Result<ConfiguredKeys, (String, String)> {
    let signing = match &config.signing_key {
        Some(path) => Some(
            AuditKey::load(path).map_err(|e| ("audit.signing_key".to_owned(), e.to_string()))?,
        ),
        None => None,
    };
    let mut trusted = Vec::with_capacity(config.trusted_keys.len());
    for (i, entry) in config.trusted_keys.iter().enumerate() {
        let field = format!("audit.trusted_keys[{i}]");
        let text = entry.trim();
        let key = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            PublicKey::parse(text, &field)
        } else {
            PublicKey::load(std::path::Path::new(text))
        }
        .map_err(|e| (field, e.to_string()))?;
        trusted.push(key);
    }
    Ok(ConfiguredKeys { signing, trusted })
}
