//! Dataset admission: before a job is created, its dataset is listed in the
//! artifact store and checked against the service's limits, so that a
//! missing or oversized dataset is refused with nothing written.

use loraflow_core::artifact::Sha256;
use loraflow_core::catalogue::ServiceStatus;
use loraflow_core::executor::ArtifactError;
use loraflow_core::job::{AdmittedDataset, DatasetRef};
use loraflow_core::limits::Limits;
use loraflow_core::validation::Violations;
use loraflow_executors::ArtifactStore;
use loraflow_executors::dataset::{FileKind, classify};

/// List the dataset and check the limits (images and bytes from the service
/// status, files of any kind from `limits`). The manifest digest covers the
/// names and sizes of every file, so a changed dataset gets a new digest.
///
/// The caller checks first that the tenant may name the URI
/// ([`crate::tenancy`]): this lists it.
pub async fn admit(
    artifacts: &ArtifactStore,
    dataset: &DatasetRef,
    status: &ServiceStatus,
    limits: &Limits,
) -> Result<AdmittedDataset, Violations> {
    let mut v = Violations::default();
    let files = match artifacts.list_dir(&dataset.uri).await {
        Ok(f) => f,
        Err(ArtifactError::Io { message, .. }) => {
            v.push(
                "dataset.uri",
                format!("dataset {} cannot be listed: {message}", dataset.uri),
            );
            return Err(v);
        }
        Err(e) => {
            v.push("dataset.uri", e.to_string());
            return Err(v);
        }
    };
    let images: Vec<&(String, u64)> = files
        .iter()
        .filter(|(name, _)| classify(std::path::Path::new(name)) == FileKind::Image)
        .collect();
    if files.is_empty() {
        v.push(
            "dataset.uri",
            format!(
                "no files at {}; upload the dataset folder first",
                dataset.uri
            ),
        );
    } else if images.is_empty() {
        v.push(
            "dataset.uri",
            format!(
                "{} holds {} files but no PNG, JPEG or WebP image",
                dataset.uri,
                files.len()
            ),
        );
    }
    let total_bytes: u64 = files.iter().map(|(_, size)| size).sum();
    if files.len() > limits.dataset_files {
        v.push(
            "dataset.uri",
            format!(
                "the dataset has {} files; this service accepts at most {} (limits.dataset_files); remove what is not an image or a caption",
                files.len(),
                limits.dataset_files
            ),
        );
    }
    if images.len() > status.max_images as usize {
        v.push(
            "dataset.uri",
            format!(
                "the dataset has {} images; this service accepts at most {}",
                images.len(),
                status.max_images
            ),
        );
    }
    if total_bytes > status.max_dataset_bytes {
        v.push(
            "dataset.uri",
            format!(
                "the dataset is {total_bytes} bytes; this service accepts at most {}",
                status.max_dataset_bytes
            ),
        );
    }
    if !v.is_empty() {
        return Err(v);
    }
    let listing: String = files
        .iter()
        .map(|(name, size)| format!("{name}\t{size}\n"))
        .collect();
    Ok(AdmittedDataset {
        image_count: images.len() as u32,
        total_bytes,
        manifest_sha256: Sha256::of(listing.as_bytes()),
    })
}
