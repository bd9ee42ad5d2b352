//! Streaming access to the artifact store, in bounded memory: what the
//! server's transfer service reads and writes through. A file is never held
//! whole: reads come as chunks of at most [`CHUNK_BYTES`], writes go out as
//! a multipart upload from a local file, digests are computed on the way.

use std::path::Path;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use loraflow_core::artifact::{Artifact, ArtifactKind, Sha256};
use loraflow_core::executor::ArtifactError;
use object_store::{GetOptions, GetRange, ObjectStoreExt, WriteMultipart};
use sha2::Digest;
use tokio::io::AsyncReadExt;

use crate::ArtifactStore;
use crate::artifacts::io_err;

/// The most bytes one chunk of a transfer carries (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Part size of the multipart uploads that write files into the store.
const PART_BYTES: usize = 5 << 20;

/// A hex SHA-256 from a finished hasher.
pub fn hex_digest(hasher: sha2::Sha256) -> Sha256 {
    Sha256(hex::encode(hasher.finalize()))
}

/// The SHA-256 and size of a local file, read in chunks.
pub async fn digest_file(path: &Path) -> Result<(Sha256, u64), ArtifactError> {
    let shown = path.display().to_string();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_err(&shown, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(|e| io_err(&shown, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex_digest(hasher), size))
}

fn not_found(uri: &str) -> impl Fn(object_store::Error) -> ArtifactError + '_ {
    move |e| match e {
        object_store::Error::NotFound { .. } => ArtifactError::NotFound { uri: uri.into() },
        e => io_err(uri, e),
    }
}

impl ArtifactStore {
    /// The size of the object at `uri`.
    pub async fn size_of(&self, uri: &str) -> Result<u64, ArtifactError> {
        let (store, path) = self.locate(uri)?;
        let meta = store.head(&path).await.map_err(not_found(uri))?;
        Ok(meta.size)
    }

    /// The bytes of `uri` from `offset` on, as chunks of at most
    /// [`CHUNK_BYTES`], and the object's whole size.
    pub async fn read_from(
        &self,
        uri: &str,
        offset: u64,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, ArtifactError>>), ArtifactError> {
        let (store, path) = self.locate(uri)?;
        let size = store.head(&path).await.map_err(not_found(uri))?.size;
        if offset > size {
            return Err(ArtifactError::Unsupported {
                uri: uri.into(),
                hint: format!("offset {offset} is past the end of the file ({size} bytes)"),
            });
        }
        if offset == size {
            return Ok((size, futures::stream::empty().boxed()));
        }
        let options = GetOptions {
            range: Some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = store
            .get_opts(&path, options)
            .await
            .map_err(not_found(uri))?;
        let owned = uri.to_owned();
        let stream = got
            .into_stream()
            .map_err(move |e| io_err(&owned, e))
            // The store's own pieces may be larger than a chunk.
            .map_ok(|b: Bytes| {
                let mut parts = Vec::new();
                let mut rest = b;
                while rest.len() > CHUNK_BYTES {
                    parts.push(Ok(rest.split_to(CHUNK_BYTES)));
                }
                parts.push(Ok(rest));
                futures::stream::iter(parts)
            })
            .try_flatten()
            .boxed();
        Ok((size, stream))
    }

    /// The SHA-256 and size of the object at `uri`, streaming.
    pub async fn digest_of(&self, uri: &str) -> Result<(Sha256, u64), ArtifactError> {
        let (_, mut stream) = self.read_from(uri, 0).await?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hex_digest(hasher), size))
    }

    /// Store the local file `local` at `uri`, as a multipart upload: memory
    /// stays bounded by a few parts whatever the file's size.
    pub async fn put_file(&self, uri: &str, local: &Path) -> Result<(), ArtifactError> {
        let (store, path) = self.locate(uri)?;
        let shown = local.display().to_string();
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| io_err(&shown, e))?;
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(|e| io_err(uri, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io_err(&shown, e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(io_err(uri, e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| io_err(uri, e))?;
        Ok(())
    }

    /// Copy `artifact` to `dest_uri` chunk by chunk, checking its digest on
    /// the way and the copy's afterwards; a copy that does not match is
    /// removed. Returns the copy's reference (kind `Published`).
    pub async fn copy_verified(
        &self,
        artifact: &Artifact,
        dest_uri: &str,
    ) -> Result<Artifact, ArtifactError> {
        let (store, path) = self.locate(dest_uri)?;
        let (_, mut stream) = self.read_from(&artifact.uri, 0).await?;
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(|e| io_err(dest_uri, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            hasher.update(&chunk);
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(io_err(dest_uri, e));
            }
            writer.put(chunk);
        }
        let actual = hex_digest(hasher);
        if actual != artifact.sha256 {
            let _ = writer.abort().await;
            return Err(ArtifactError::DigestMismatch {
                uri: artifact.uri.clone(),
                expected: artifact.sha256.clone(),
                actual,
            });
        }
        writer.finish().await.map_err(|e| io_err(dest_uri, e))?;
        // A publish is only done when the bytes at the permanent location
        // are the approved ones.
        let (copied, size) = self.digest_of(dest_uri).await?;
        if copied != artifact.sha256 {
            let _ = store.delete(&path).await;
            return Err(ArtifactError::DigestMismatch {
                uri: dest_uri.into(),
                expected: artifact.sha256.clone(),
                actual: copied,
            });
        }
        Ok(Artifact {
            kind: ArtifactKind::Published,
            name: dest_uri.rsplit('/').next().unwrap_or(dest_uri).to_owned(),
            uri: dest_uri.to_owned(),
            sha256: artifact.sha256.clone(),
            size_bytes: size,
            epoch: artifact.epoch,
        })
    }

    /// Move the object at `from` to `to` (both in this store).
    pub async fn rename_uri(&self, from: &str, to: &str) -> Result<(), ArtifactError> {
        let (store, src) = self.locate(from)?;
        let (_, dst) = self.locate(to)?;
        store.rename(&src, &dst).await.map_err(not_found(from))
    }

    /// Remove the object at `uri`; a missing one is not an error.
    pub async fn delete_uri(&self, uri: &str) -> Result<(), ArtifactError> {
        let (store, path) = self.locate(uri)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(uri, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_goes_in_and_comes_out_in_chunks_from_any_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&tmp.path().join("a").display().to_string()).unwrap();
        let local = tmp.path().join("big.bin");
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 123)).map(|i| i as u8).collect();
        std::fs::write(&local, &data).unwrap();
        let uri = store.uri_of("jobs/j/s/1/big.bin");
        store.put_file(&uri, &local).await.unwrap();
        assert_eq!(store.size_of(&uri).await.unwrap(), data.len() as u64);
        let (digest, size) = store.digest_of(&uri).await.unwrap();
        assert_eq!((digest, size), (Sha256::of(&data), data.len() as u64));
        assert_eq!(digest_file(&local).await.unwrap().0, Sha256::of(&data));

        let (size, stream) = store.read_from(&uri, 1000).await.unwrap();
        assert_eq!(size, data.len() as u64);
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        assert_eq!(chunks.concat(), &data[1000..]);

        let art = Artifact {
            kind: ArtifactKind::Lora,
            name: "big.bin".into(),
            uri: uri.clone(),
            sha256: Sha256::of(&data),
            size_bytes: data.len() as u64,
            epoch: Some(1),
        };
        let dest = store.uri_of("published/x.bin");
        let copy = store.copy_verified(&art, &dest).await.unwrap();
        assert_eq!(copy.kind, ArtifactKind::Published);
        let wrong = Artifact {
            sha256: Sha256::of(b"other"),
            ..art
        };
        let bad = store.uri_of("published/y.bin");
        assert!(matches!(
            store.copy_verified(&wrong, &bad).await,
            Err(ArtifactError::DigestMismatch { .. })
        ));
        assert!(matches!(
            store.size_of(&bad).await,
            Err(ArtifactError::NotFound { .. })
        ));
    }
}
