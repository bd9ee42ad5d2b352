//! loraflow-proto: the gRPC wire contract of loraflow and its conversions
//! to and from the domain (`loraflow-core`).
//!
//! The contract lives in `proto/loraflow/v1/*.proto` (package `loraflow.v1`):
//! `JobService` for clients (create, follow, review and audit jobs) and
//! `ExecutorService` for workers, which connect out and pull steps. The build
//! script compiles it with `tonic-prost-build`, using the `protoc` that
//! `protoc-bin-vendored` ships unless `PROTOC` names another, so a fresh
//! machine needs nothing installed.
//!
//! # Modules
//! - [`pb`] — the generated messages, servers and clients
//!   (`pb::v1::job_service_server::JobServiceServer`,
//!   `pb::v1::executor_service_client::ExecutorServiceClient`, ...).
//! - [`convert`] — domain ↔ wire conversions, one file per area; wire → domain
//!   reports every bad field as a [`Violations`](loraflow_core::validation::Violations)
//!   entry with its dotted path.
//! - [`status`] — domain errors and violations as `tonic::Status`, with
//!   `google.rpc.BadRequest` and `ErrorInfo` details.
//! - [`codec`] — the protobuf codec of the generated services: bytes that do
//!   not decode are `INVALID_ARGUMENT`, not tonic-prost's `INTERNAL`.
//! - [`aip`] — resource names, etags, request ids and page sizes, as the
//!   Google API guidelines the contract follows want them.
//!
//! [`FILE_DESCRIPTOR_SET`] is what `tonic-reflection` serves.

pub mod aip;
pub mod codec;
pub mod convert;
pub mod status;

/// Generated code. Lints are relaxed here only: the code is prost's and
/// tonic's, not ours to restyle.
pub mod pb {
    /// Package `loraflow.v1`.
    #[allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        unreachable_pub,
        rustdoc::invalid_html_tags,
        rustdoc::bare_urls
    )]
    pub mod v1 {
        tonic::include_proto!("loraflow.v1");
    }
}

/// The encoded `FileDescriptorSet` of `loraflow.v1` (and the well-known
/// types it imports), for `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("loraflow_v1_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_both_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .filter(|f| f.package() == "loraflow.v1")
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(|s| format!("loraflow.v1.{}", s.name()))
            })
            .collect();
        assert!(
            services.contains(&"loraflow.v1.JobService".to_owned()),
            "{services:?}"
        );
        assert!(
            services.contains(&"loraflow.v1.ExecutorService".to_owned()),
            "{services:?}"
        );
    }

    #[test]
    fn descriptor_set_is_self_contained() {
        // Reflection clients resolve imports from the set itself, so the
        // well-known types must be in it too.
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
        for f in &fds.file {
            for dep in &f.dependency {
                assert!(
                    names.contains(&dep.as_str()),
                    "{} imports missing {dep}",
                    f.name()
                );
            }
        }
    }
}
