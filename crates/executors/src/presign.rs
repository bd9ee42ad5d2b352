//! Presigned URLs: a time-limited GET or PUT of one object that any HTTP
//! client can use without credentials, so bytes go straight between a
//! worker or client and the bucket. Only stores with a signer (S3) have
//! them; the local filesystem answers `None`.

use std::time::Duration;

use loraflow_core::executor::ArtifactError;
use url::Url;

use crate::ArtifactStore;

/// What signs URLs for a store: object_store's `Signer` (S3); nothing in a
/// build without S3.
#[cfg(feature = "s3")]
pub(crate) type SignerRef = std::sync::Arc<dyn object_store::signer::Signer>;
#[cfg(not(feature = "s3"))]
pub(crate) type SignerRef = NoSigner;

/// No store can presign in a build without S3.
#[cfg(not(feature = "s3"))]
#[derive(Debug, Clone)]
pub(crate) enum NoSigner {}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Get,
    Put,
}

/// The longest validity S3 accepts for a SigV4 presigned URL (7 days).
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl ArtifactStore {
    /// A URL that downloads the object at `uri` with a plain GET for `ttl`;
    /// `None` when the store holding `uri` cannot presign (local files).
    pub async fn presign_get(
        &self,
        uri: &str,
        ttl: Duration,
    ) -> Result<Option<Url>, ArtifactError> {
        self.presign(Verb::Get, uri, ttl).await
    }

    /// A URL that uploads the object at `uri` with a plain PUT of the body
    /// for `ttl`; `None` when the store holding `uri` cannot presign.
    pub async fn presign_put(
        &self,
        uri: &str,
        ttl: Duration,
    ) -> Result<Option<Url>, ArtifactError> {
        self.presign(Verb::Put, uri, ttl).await
    }

    async fn presign(
        &self,
        verb: Verb,
        uri: &str,
        ttl: Duration,
    ) -> Result<Option<Url>, ArtifactError> {
        if ttl.is_zero() || ttl > MAX_PRESIGN_TTL {
            return Err(ArtifactError::Unsupported {
                uri: uri.into(),
                hint: format!(
                    "a presigned URL's lifetime must be between 1s and {}s (7 days), got {}s",
                    MAX_PRESIGN_TTL.as_secs(),
                    ttl.as_secs()
                ),
            });
        }
        let opened = self.locate_opened(uri)?;
        let Some(signer) = opened.signer else {
            return Ok(None);
        };
        #[cfg(feature = "s3")]
        {
            use object_store::signer::Method;
            let method = match verb {
                Verb::Get => Method::GET,
                Verb::Put => Method::PUT,
            };
            let url = signer
                .signed_url(method, &opened.path, ttl)
                .await
                .map_err(|e| self.store_err(uri, e))?;
            Ok(Some(url))
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = verb;
            match signer {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_filesystem_cannot_presign() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path().to_str().unwrap()).unwrap();
        let uri = format!("{}jobs/a/b", store.root());
        let ttl = Duration::from_secs(60);
        assert_eq!(store.presign_get(&uri, ttl).await.unwrap(), None);
        assert_eq!(store.presign_put(&uri, ttl).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_lifetime_beyond_seven_days_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path().to_str().unwrap()).unwrap();
        let uri = format!("{}jobs/a/b", store.root());
        let err = store
            .presign_get(&uri, MAX_PRESIGN_TTL + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("7 days"), "{err}");
    }
}
