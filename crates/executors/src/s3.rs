//! How the artifact store reaches S3-compatible storage: endpoint, region,
//! credentials, plain HTTP for a local server; and what to tell the
//! operator when the bucket is missing or the credentials are refused.
//!
//! Every setting left unset here falls back to the usual AWS environment
//! variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), read by
//! object_store's `AmazonS3Builder::from_env`.

use loraflow_core::executor::ArtifactError;
use serde::Deserialize;

/// Settings for `s3://bucket/prefix` artifact locations; `[artifacts]` in
/// `loraflow.toml`. A set field wins over its environment variable.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// The S3 API's base URL, for S3-compatible servers (MinIO, Ceph, R2,
    /// a local test server): `http://127.0.0.1:9000`. Unset: AWS.
    pub endpoint: Option<String>,
    /// The bucket's region (`us-east-1` when neither this nor `AWS_REGION`
    /// is set).
    pub region: Option<String>,
    /// Allow `http://` endpoints (a local server); HTTPS only otherwise.
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret(&self.secret_access_key))
            .field("session_token", &secret(&self.session_token))
            .finish()
    }
}

impl S3Options {
    /// The endpoint requests go to, for messages: this setting, else the
    /// environment's, else AWS's for the region.
    pub fn endpoint_description(&self) -> String {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(e) = self
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"))
        {
            return e;
        }
        let region = self
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        format!("AWS S3 in {region} (no endpoint set)")
    }
}

/// The bucket named by an `s3://bucket/...` URI.
pub(crate) fn bucket_of(uri: &str) -> &str {
    uri.split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .unwrap_or(uri)
}

/// An object store failure on `uri`, explained: a missing bucket and
/// refused credentials are configuration errors, said as such, with what
/// to check; a missing object stays [`ArtifactError::NotFound`].
pub(crate) fn explain(uri: &str, options: &S3Options, e: object_store::Error) -> ArtifactError {
    /// S3's codes for a key it does not accept.
    const REFUSED: [&str; 5] = [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
    ];
    let is_s3 = uri.starts_with("s3://") || uri.starts_with("s3a://");
    let text = e.to_string();
    // Some requests (listings) come back as `Generic` with the status and
    // S3's error document in the text, so the codes are looked for there.
    let refused = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || REFUSED.iter().any(|code| text.contains(code));
    if is_s3 && text.contains("NoSuchBucket") {
        return ArtifactError::Io {
            uri: uri.into(),
            message: format!(
                "bucket {:?} does not exist at {}; create it, or fix the bucket in the artifact URL ([artifacts] url, --artifacts) or the endpoint ([artifacts] endpoint, AWS_ENDPOINT_URL)",
                bucket_of(uri),
                options.endpoint_description()
            ),
        };
    }
    if is_s3 && refused {
        let reason = REFUSED
            .into_iter()
            .find(|code| text.contains(code))
            .unwrap_or("access refused");
        return ArtifactError::Io {
            uri: uri.into(),
            message: format!(
                "{} refused the credentials for bucket {:?} ({reason}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or [artifacts] access_key_id / secret_access_key), and that this key may read and write the bucket",
                options.endpoint_description(),
                bucket_of(uri)
            ),
        };
    }
    match e {
        object_store::Error::NotFound { .. } => ArtifactError::NotFound { uri: uri.into() },
        _ if is_s3 => ArtifactError::Io {
            uri: uri.into(),
            message: format!(
                "{text} (endpoint: {}; check [artifacts] endpoint / AWS_ENDPOINT_URL, and allow_http / AWS_ALLOW_HTTP=true for an http:// endpoint)",
                options.endpoint_description()
            ),
        },
        _ => ArtifactError::Io {
            uri: uri.into(),
            message: text,
        },
    }
}

/// An S3 store for `url` (`s3://bucket/prefix`) with `options` over the
/// environment's settings.
#[cfg(feature = "s3")]
pub(crate) fn open(
    url: &url::Url,
    options: &S3Options,
) -> Result<std::sync::Arc<object_store::aws::AmazonS3>, ArtifactError> {
    use object_store::aws::AmazonS3Builder;

    // The client's TLS runs on the process's rustls provider; ring is the
    // only one compiled in. A provider the embedding program installed stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(allow) = options.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(id) = &options.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &options.session_token {
        builder = builder.with_token(token);
    }
    let store = builder.build().map_err(|e| ArtifactError::Unsupported {
        uri: url.to_string(),
        hint: format!(
            "{e}; S3 locations read [artifacts] endpoint/region/allow_http/access_key_id/secret_access_key or the AWS_* environment variables"
        ),
    })?;
    Ok(std::sync::Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let o = S3Options {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI".into()),
            session_token: Some("tok".into()),
            ..S3Options::default()
        };
        let shown = format!("{o:?}");
        assert!(shown.contains("AKIAEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("tok\""), "{shown}");
    }

    #[test]
    fn the_bucket_is_the_host_of_the_uri() {
        assert_eq!(bucket_of("s3://training/loraflow/jobs/a"), "training");
        assert_eq!(bucket_of("s3://only"), "only");
    }

    #[test]
    fn a_set_endpoint_is_the_one_named() {
        let o = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..S3Options::default()
        };
        assert_eq!(o.endpoint_description(), "http://127.0.0.1:9000");
    }
}
