//! Dataset uploads into a tenant's content-addressed namespace:
//! `<root>/datasets/<tenant>/<sha256 of the manifest>/`, the manifest being
//! one line per file (`name`, size, SHA-256), sorted by name. The same
//! folder is therefore stored once: a second upload finds it complete and
//! writes nothing. Files are written under a staging name first
//! (`datasets/<tenant>/.incoming/<id>/`) and moved into place only when
//! every one of them is written, so an interrupted upload never leaves a
//! half dataset under its final name.

use std::path::{Path, PathBuf};

use loraflow_core::artifact::Sha256;
use loraflow_core::executor::ArtifactError;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;

use crate::ArtifactStore;
use crate::artifacts::{collect_files, io_err};

/// The folder of the artifact root holding every tenant's uploads.
pub const DATASETS_DIR: &str = "datasets";

/// One file of a local dataset folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Relative name, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256,
}

/// A local dataset folder, read and hashed: what will be uploaded and the
/// digest that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDataset {
    pub files: Vec<LocalFile>,
    /// SHA-256 of [`manifest`](Self::manifest): the folder's name in the
    /// tenant's namespace.
    pub manifest_sha256: Sha256,
}

impl LocalDataset {
    /// Read every file under `dir` and hash it.
    pub fn read(dir: &Path) -> Result<Self, ArtifactError> {
        let shown = dir.display().to_string();
        let mut paths = Vec::new();
        collect_files(dir, &mut paths).map_err(|e| io_err(&shown, e))?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            // Hashed as it is read: a large file is never held whole.
            let (sha256, size) = {
                use sha2::Digest;
                let shown = path.display().to_string();
                let mut file = std::fs::File::open(&path).map_err(|e| io_err(&shown, e))?;
                let mut hasher = sha2::Sha256::new();
                let size = std::io::copy(&mut file, &mut hasher).map_err(|e| io_err(&shown, e))?;
                (crate::artifact_stream::hex_digest(hasher), size)
            };
            let name = path
                .strip_prefix(dir)
                .expect("walked under dir")
                .to_string_lossy()
                .replace('\\', "/");
            files.push(LocalFile {
                name,
                path,
                size,
                sha256,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let manifest = manifest_of(&files);
        Ok(Self {
            files,
            manifest_sha256: Sha256::of(manifest.as_bytes()),
        })
    }

    /// One line per file, `name\tsize\tsha256`, sorted by name.
    pub fn manifest(&self) -> String {
        manifest_of(&self.files)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn manifest_of(files: &[LocalFile]) -> String {
    manifest_text(files.iter().map(|f| (f.name.as_str(), f.size, &f.sha256)))
}

fn manifest_text<'a>(files: impl Iterator<Item = (&'a str, u64, &'a Sha256)>) -> String {
    files
        .map(|(name, size, sha)| format!("{name}\t{size}\t{sha}\n"))
        .collect()
}

/// The digest that names a dataset folder: the SHA-256 of its manifest,
/// given its files (relative name, size, digest) sorted by name.
pub fn manifest_digest<'a>(files: impl Iterator<Item = (&'a str, u64, &'a Sha256)>) -> Sha256 {
    Sha256::of(manifest_text(files).as_bytes())
}

/// What [`ArtifactStore::upload_dataset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetUpload {
    /// The folder's URI: what a job's dataset names.
    pub uri: String,
    /// Files written; 0 when the folder was already stored.
    pub uploaded: usize,
}

impl ArtifactStore {
    fn dataset_dir(tenant: &str, dataset: &LocalDataset) -> String {
        format!("{DATASETS_DIR}/{tenant}/{}", dataset.manifest_sha256)
    }

    /// The URI `dataset` has (or will have) in `tenant`'s namespace.
    pub fn dataset_uri(&self, tenant: &str, dataset: &LocalDataset) -> String {
        self.uri_of(&format!("{}/", Self::dataset_dir(tenant, dataset)))
    }

    /// Store `dataset` in `tenant`'s namespace, unless it is there already
    /// (every file with its size). Written under a staging name, then moved
    /// into place; on failure the staged files are removed.
    pub async fn upload_dataset(
        &self,
        tenant: &str,
        dataset: &LocalDataset,
    ) -> Result<DatasetUpload, ArtifactError> {
        if tenant.is_empty() || tenant == "." || tenant == ".." || tenant.contains(['/', '\\']) {
            return Err(ArtifactError::Unsupported {
                uri: tenant.to_owned(),
                hint: "a tenant name must be one path segment".into(),
            });
        }
        let uri = self.dataset_uri(tenant, dataset);
        let wanted: Vec<(String, u64)> = dataset
            .files
            .iter()
            .map(|f| (f.name.clone(), f.size))
            .collect();
        if self.list_dir(&uri).await? == wanted {
            return Ok(DatasetUpload { uri, uploaded: 0 });
        }
        let staging = format!(
            "{DATASETS_DIR}/{tenant}/.incoming/{}",
            uuid::Uuid::new_v4().simple()
        );
        let result = self.stage_and_commit(&staging, tenant, dataset).await;
        self.remove_staging(&staging).await;
        result?;
        Ok(DatasetUpload {
            uri,
            uploaded: dataset.files.len(),
        })
    }

    async fn stage_and_commit(
        &self,
        staging: &str,
        tenant: &str,
        dataset: &LocalDataset,
    ) -> Result<(), ArtifactError> {
        for f in &dataset.files {
            let data = tokio::fs::read(&f.path)
                .await
                .map_err(|e| io_err(&f.path.display().to_string(), e))?;
            if Sha256::of(&data) != f.sha256 {
                return Err(io_err(
                    &f.path.display().to_string(),
                    "the file changed while it was uploaded; submit again",
                ));
            }
            self.write(&self.uri_of(&format!("{staging}/{}", f.name)), data.into())
                .await?;
        }
        let dest = Self::dataset_dir(tenant, dataset);
        for f in &dataset.files {
            let (store, from) = self.locate(&self.uri_of(&format!("{staging}/{}", f.name)))?;
            let (_, to) = self.locate(&self.uri_of(&format!("{dest}/{}", f.name)))?;
            store
                .rename(&from, &to)
                .await
                .map_err(|e| io_err(&self.uri_of(&dest), e))?;
        }
        Ok(())
    }

    /// Remove what is left under the staging name (all of it after a
    /// failure; on a local disk, the empty folders after a success).
    async fn remove_staging(&self, staging: &str) {
        let uri = self.uri_of(&format!("{staging}/"));
        if let Ok((store, prefix)) = self.locate(&uri) {
            use futures::TryStreamExt;
            let left: Vec<ObjPath> = store
                .list(Some(&prefix))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .unwrap_or_default();
            for p in left {
                let _ = store.delete(&p).await;
            }
        }
        if let Ok(url) = url::Url::parse(&uri)
            && let Ok(dir) = url.to_file_path()
        {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            // `.incoming` itself, once no other upload uses it.
            if let Some(parent) = dir.parent() {
                let _ = tokio::fs::remove_dir(parent).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path) {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.png"), b"image a").unwrap();
        std::fs::write(dir.join("a.txt"), b"caption a").unwrap();
        std::fs::write(dir.join("sub/b.png"), b"image b").unwrap();
    }

    fn count_files(dir: &Path) -> usize {
        let mut out = Vec::new();
        collect_files(dir, &mut out).unwrap();
        out.len()
    }

    #[tokio::test]
    async fn the_same_folder_is_stored_once_under_its_manifest_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("local");
        folder(&local);
        let root = tmp.path().join("artifacts");
        let store = ArtifactStore::open(&root.display().to_string()).unwrap();
        let ds = LocalDataset::read(&local).unwrap();
        assert_eq!(ds.files.len(), 3);
        assert_eq!(ds.manifest_sha256, Sha256::of(ds.manifest().as_bytes()));
        assert!(
            ds.manifest().contains("sub/b.png\t7\t"),
            "{}",
            ds.manifest()
        );

        let first = store.upload_dataset("studio", &ds).await.unwrap();
        assert_eq!(first.uploaded, 3);
        assert!(
            first
                .uri
                .ends_with(&format!("datasets/studio/{}/", ds.manifest_sha256)),
            "{}",
            first.uri
        );
        assert_eq!(
            store.list_dir(&first.uri).await.unwrap(),
            vec![
                ("a.png".to_owned(), 7),
                ("a.txt".to_owned(), 9),
                ("sub/b.png".to_owned(), 7)
            ]
        );
        let again = store.upload_dataset("studio", &ds).await.unwrap();
        assert_eq!(
            again,
            DatasetUpload {
                uri: first.uri.clone(),
                uploaded: 0
            }
        );
        // Nothing staged is left behind, and nothing but the dataset is stored.
        assert_eq!(count_files(&root), 3);
        assert!(!root.join("datasets/studio/.incoming").exists());

        // A changed folder is another dataset.
        std::fs::write(local.join("a.txt"), b"another caption").unwrap();
        let changed = LocalDataset::read(&local).unwrap();
        assert_ne!(changed.manifest_sha256, ds.manifest_sha256);
        assert_eq!(
            store
                .upload_dataset("studio", &changed)
                .await
                .unwrap()
                .uploaded,
            3
        );
        assert_eq!(count_files(&root), 6);
    }

    #[tokio::test]
    async fn a_half_stored_folder_is_completed_and_bad_tenants_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("local");
        folder(&local);
        let root = tmp.path().join("artifacts");
        let store = ArtifactStore::open(&root.display().to_string()).unwrap();
        let ds = LocalDataset::read(&local).unwrap();
        let uri = store.upload_dataset("studio", &ds).await.unwrap().uri;
        let path = url::Url::parse(&uri).unwrap().to_file_path().unwrap();
        std::fs::remove_file(path.join("a.txt")).unwrap();
        assert_eq!(
            store.upload_dataset("studio", &ds).await.unwrap().uploaded,
            3
        );
        assert_eq!(store.list_dir(&uri).await.unwrap().len(), 3);
        for bad in ["", "..", "a/b"] {
            assert!(store.upload_dataset(bad, &ds).await.is_err(), "{bad:?}");
        }
    }
}
