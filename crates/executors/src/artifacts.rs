//! The artifact store on `object_store`: a root URL (`file:///...` by default,
//! `s3://bucket/prefix` with the `s3` feature, on by default; see
//! [`S3Options`](crate::s3::S3Options)) under which every step writes
//! `jobs/<job>/<step>/<attempt>/<name>`. Digests are computed on upload and
//! verified on every download and after every copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use loraflow_core::artifact::{Artifact, ArtifactKind, Sha256};
use loraflow_core::executor::{ArtifactError, ArtifactIo};
use loraflow_core::ids::{JobId, StepId};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::presign::SignerRef;
use crate::s3::{self, S3Options};

/// Where a job's files live.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: Url,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// Signs presigned URLs for the root's objects (S3); `None` for the
    /// local filesystem.
    pub(crate) signer: Option<SignerRef>,
    /// How S3 locations (the root, and any other `s3://` URI a job names)
    /// are reached.
    pub(crate) s3: S3Options,
}

/// An object store opened for a URL, the path inside it, and its signer.
pub(crate) struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjPath,
    pub signer: Option<SignerRef>,
}

pub(crate) fn io_err(uri: &str, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io {
        uri: uri.to_owned(),
        message: e.to_string(),
    }
}

/// `file://` URL for a local path, made absolute.
pub fn file_url(path: &Path) -> Result<Url, ArtifactError> {
    let abs = std::path::absolute(path).map_err(|e| io_err(&path.display().to_string(), e))?;
    Url::from_directory_path(&abs).map_err(|()| ArtifactError::Unsupported {
        uri: abs.display().to_string(),
        hint: "not a valid local path".into(),
    })
}

fn parse(uri: &str) -> Result<Url, ArtifactError> {
    match Url::parse(uri) {
        Ok(u) => Ok(u),
        // A bare path (absolute, or relative to the current folder, such as
        // the default `loraflow-artifacts`) means the local filesystem.
        Err(e)
            if uri.starts_with('/')
                || uri.starts_with('.')
                || (e == url::ParseError::RelativeUrlWithoutBase && !uri.is_empty()) =>
        {
            let local = Url::from_file_path(std::path::absolute(uri).map_err(|e| io_err(uri, e))?)
                .map_err(|()| ArtifactError::Unsupported {
                    uri: uri.into(),
                    hint: "not a valid local path".into(),
                })?;
            // Parsing the URL again resolves `..` and `.` segments.
            Url::parse(local.as_str()).map_err(|e| ArtifactError::Unsupported {
                uri: uri.into(),
                hint: e.to_string(),
            })
        }
        Err(e) => Err(ArtifactError::Unsupported {
            uri: uri.into(),
            hint: format!("{e}; use file:///absolute/path or s3://bucket/prefix"),
        }),
    }
}

/// `uri` as an absolute URL: a local path (relative to the current folder
/// or not) becomes a `file://` URL, a URL stays as it is.
pub fn absolute_uri(uri: &str) -> Result<String, ArtifactError> {
    parse(uri).map(|u| u.to_string())
}

/// An object store for `url` and the path inside it.
fn open_url(url: &Url, s3_options: &S3Options) -> Result<Opened, ArtifactError> {
    if url.scheme() == "file" {
        // object_store's local store needs the directory to exist.
        let local = url
            .to_file_path()
            .map_err(|()| ArtifactError::Unsupported {
                uri: url.to_string(),
                hint: "file URLs must be absolute".into(),
            })?;
        let store = object_store::local::LocalFileSystem::new();
        let path = ObjPath::from_absolute_path(&local).map_err(|e| io_err(url.as_str(), e))?;
        return Ok(Opened {
            store: Arc::new(store),
            path,
            signer: None,
        });
    }
    #[cfg(feature = "s3")]
    if matches!(url.scheme(), "s3" | "s3a") {
        let store = s3::open(url, s3_options)?;
        let path = ObjPath::from_url_path(url.path()).map_err(|e| io_err(url.as_str(), e))?;
        return Ok(Opened {
            store: store.clone(),
            path,
            signer: Some(store as SignerRef),
        });
    }
    #[cfg(not(feature = "s3"))]
    let _ = s3_options;
    let (store, path) = object_store::parse_url(url).map_err(|e| ArtifactError::Unsupported {
        uri: url.to_string(),
        hint: match url.scheme() {
            "s3" | "s3a" => format!(
                "{e} (this build of loraflow leaves out S3: build it with the default features, or `--features s3`)"
            ),
            _ => format!("{e}; supported: file:// and s3://bucket/prefix"),
        },
    })?;
    Ok(Opened {
        store: Arc::from(store),
        path,
        signer: None,
    })
}

impl ArtifactStore {
    /// Open the store at `root` (a URL, or a local path). Local roots are
    /// created; S3 settings come from the AWS environment variables.
    pub fn open(root: &str) -> Result<Self, ArtifactError> {
        Self::open_with(root, &S3Options::default())
    }

    /// Open the store at `root`, reaching S3 locations with `s3_options`
    /// (over the AWS environment variables). Nothing is contacted yet:
    /// [`probe`](Self::probe) checks the bucket and the credentials.
    pub fn open_with(root: &str, s3_options: &S3Options) -> Result<Self, ArtifactError> {
        let mut url = parse(root)?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|()| io_err(root, "not a local path"))?;
            std::fs::create_dir_all(&dir).map_err(|e| io_err(root, e))?;
        }
        let opened = open_url(&url, s3_options)?;
        Ok(Self {
            root: url,
            store: opened.store,
            prefix: opened.path,
            signer: opened.signer,
            s3: s3_options.clone(),
        })
    }

    /// An object store failure on `uri`, explained (missing bucket,
    /// refused credentials, unreachable endpoint).
    pub(crate) fn store_err(&self, uri: &str, e: object_store::Error) -> ArtifactError {
        s3::explain(uri, &self.s3, e)
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Check that the root can be listed: for S3, that the bucket exists
    /// at the endpoint and the credentials are accepted. Servers and
    /// workers call this when they start, so a misconfiguration is said
    /// then and not at a job's first step.
    pub async fn probe(&self) -> Result<(), ArtifactError> {
        if self.root.scheme() == "file" {
            return Ok(());
        }
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| self.store_err(self.root.as_str(), e))?;
        Ok(())
    }

    /// The store a step's executor writes through.
    pub fn for_step(&self, job: &JobId, step: &StepId, attempt: u32) -> StepArtifacts {
        StepArtifacts {
            store: self.clone(),
            dir: format!("jobs/{job}/{step}/{attempt}"),
        }
    }

    /// The URI of `rel` (a `/`-separated path) under the root.
    pub fn uri_of(&self, rel: &str) -> String {
        format!("{}{rel}", self.root)
    }

    /// The object store and path holding `uri`: ours when `uri` is under the
    /// root, otherwise one opened for it.
    pub(crate) fn locate(
        &self,
        uri: &str,
    ) -> Result<(Arc<dyn ObjectStore>, ObjPath), ArtifactError> {
        let opened = self.locate_opened(uri)?;
        Ok((opened.store, opened.path))
    }

    /// [`locate`](Self::locate), with the signer of the store holding `uri`.
    pub(crate) fn locate_opened(&self, uri: &str) -> Result<Opened, ArtifactError> {
        if let Some(rel) = uri.strip_prefix(self.root.as_str()) {
            let path = self
                .prefix
                .parts()
                .chain(ObjPath::from(rel).parts())
                .collect();
            return Ok(Opened {
                store: self.store.clone(),
                path,
                signer: self.signer.clone(),
            });
        }
        open_url(&parse(uri)?, &self.s3)
    }

    async fn read(&self, uri: &str) -> Result<bytes::Bytes, ArtifactError> {
        let (store, path) = self.locate(uri)?;
        let got = store.get(&path).await.map_err(|e| self.store_err(uri, e))?;
        got.bytes().await.map_err(|e| io_err(uri, e))
    }

    pub(crate) async fn write(&self, uri: &str, data: bytes::Bytes) -> Result<(), ArtifactError> {
        let (store, path) = self.locate(uri)?;
        store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| self.store_err(uri, e))?;
        Ok(())
    }

    /// Upload every file under the local folder `local` to
    /// `<root>/<dest>/...`; returns the folder's URI (what a job's dataset
    /// reference names) and the number of files. A tenant's datasets go
    /// through [`upload_dataset`](Self::upload_dataset) instead, which
    /// names them by content in the tenant's namespace.
    pub async fn upload_dir(
        &self,
        local: &Path,
        dest: &str,
    ) -> Result<(String, usize), ArtifactError> {
        let mut files = Vec::new();
        collect_files(local, &mut files).map_err(|e| io_err(&local.display().to_string(), e))?;
        files.sort();
        for f in &files {
            let rel = f
                .strip_prefix(local)
                .expect("walked under local")
                .to_string_lossy()
                .replace('\\', "/");
            let data = tokio::fs::read(f)
                .await
                .map_err(|e| io_err(&f.display().to_string(), e))?;
            self.write(&self.uri_of(&format!("{dest}/{rel}")), data.into())
                .await?;
        }
        Ok((self.uri_of(&format!("{dest}/")), files.len()))
    }

    /// The files under `uri` (a dataset folder): relative name and size,
    /// sorted by name, without downloading them.
    pub async fn list_dir(&self, uri: &str) -> Result<Vec<(String, u64)>, ArtifactError> {
        let (store, prefix) = self.locate(uri)?;
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(uri, e))?;
        let mut files: Vec<(String, u64)> = objects
            .into_iter()
            .map(|m| {
                let rel: Vec<String> = m
                    .location
                    .prefix_match(&prefix)
                    .into_iter()
                    .flatten()
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                (rel.join("/"), m.size)
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Download an artifact's bytes, verifying the digest.
    pub async fn get_verified(&self, artifact: &Artifact) -> Result<bytes::Bytes, ArtifactError> {
        let data = self.read(&artifact.uri).await?;
        let actual = Sha256::of(&data);
        if actual != artifact.sha256 {
            return Err(ArtifactError::DigestMismatch {
                uri: artifact.uri.clone(),
                expected: artifact.sha256.clone(),
                actual,
            });
        }
        Ok(data)
    }
}

pub(crate) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The artifact store as one step attempt sees it.
#[derive(Debug, Clone)]
pub struct StepArtifacts {
    store: ArtifactStore,
    dir: String,
}

#[async_trait]
impl ArtifactIo for StepArtifacts {
    async fn put(
        &self,
        local: &Path,
        name: &str,
        kind: ArtifactKind,
        epoch: Option<u32>,
    ) -> Result<Artifact, ArtifactError> {
        let data = tokio::fs::read(local)
            .await
            .map_err(|e| io_err(&local.display().to_string(), e))?;
        let uri = self.store.uri_of(&format!("{}/{name}", self.dir));
        let artifact = Artifact {
            kind,
            name: name.to_owned(),
            uri: uri.clone(),
            sha256: Sha256::of(&data),
            size_bytes: data.len() as u64,
            epoch,
        };
        self.store.write(&uri, data.into()).await?;
        Ok(artifact)
    }

    async fn fetch(&self, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError> {
        let data = self.store.get_verified(artifact).await?;
        write_local(dest, &data).await
    }

    async fn fetch_dir(&self, uri: &str, dest: &Path) -> Result<Vec<PathBuf>, ArtifactError> {
        let (store, prefix) = self.store.locate(uri)?;
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store.store_err(uri, e))?;
        if objects.is_empty() {
            return Err(ArtifactError::NotFound { uri: uri.into() });
        }
        let mut paths = Vec::with_capacity(objects.len());
        for meta in objects {
            let rel: Vec<_> = meta
                .location
                .prefix_match(&prefix)
                .into_iter()
                .flatten()
                .collect();
            let mut local = dest.to_path_buf();
            for part in &rel {
                local.push(part.as_ref());
            }
            let data = store
                .get(&meta.location)
                .await
                .map_err(|e| io_err(meta.location.as_ref(), e))?
                .bytes()
                .await
                .map_err(|e| io_err(meta.location.as_ref(), e))?;
            write_local(&local, &data).await?;
            paths.push(local);
        }
        paths.sort();
        Ok(paths)
    }

    async fn publish(
        &self,
        artifact: &Artifact,
        dest_uri: &str,
    ) -> Result<Artifact, ArtifactError> {
        // The log records where the LoRA is for good: an absolute URL, not a
        // path relative to this process's folder.
        let dest = parse(dest_uri)?.to_string();
        let dest_uri = dest.as_str();
        let data = self.store.get_verified(artifact).await?;
        self.store.write(dest_uri, data).await?;
        // Read the copy back: a publish is only done when the bytes at the
        // permanent location are the approved ones.
        let copied = Artifact {
            kind: ArtifactKind::Published,
            name: dest_uri.rsplit('/').next().unwrap_or(dest_uri).to_owned(),
            uri: dest_uri.to_owned(),
            sha256: artifact.sha256.clone(),
            size_bytes: artifact.size_bytes,
            epoch: artifact.epoch,
        };
        self.store.get_verified(&copied).await?;
        Ok(copied)
    }
}

async fn write_local(dest: &Path, data: &[u8]) -> Result<(), ArtifactError> {
    let uri = dest.display().to_string();
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_err(&uri, e))?;
    }
    tokio::fs::write(dest, data)
        .await
        .map_err(|e| io_err(&uri, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `loraflow serve` with its default artifact root
    /// (`loraflow-artifacts`, a path relative to the current folder) refused
    /// to start, because only paths starting with `/` or `.` were local.
    #[test]
    fn a_relative_folder_is_a_local_path() {
        let url = parse("loraflow-artifacts").unwrap();
        assert_eq!(url.scheme(), "file");
        let path = url.to_file_path().unwrap();
        assert_eq!(
            path,
            std::env::current_dir().unwrap().join("loraflow-artifacts")
        );
        assert_eq!(
            parse("data/published").unwrap().to_file_path().unwrap(),
            std::env::current_dir().unwrap().join("data/published")
        );
    }

    #[test]
    fn urls_and_absolute_paths_parse_as_they_are() {
        assert_eq!(parse("/srv/a").unwrap().as_str(), "file:///srv/a");
        assert_eq!(parse("file:///srv/a").unwrap().as_str(), "file:///srv/a");
        assert_eq!(parse("s3://bucket/p").unwrap().scheme(), "s3");
        assert!(matches!(parse(""), Err(ArtifactError::Unsupported { .. })));
    }
}
