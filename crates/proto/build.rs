//! Compiles `proto/loraflow/v1/*.proto` into prost messages and tonic
//! clients and servers, and writes the file descriptor set that gRPC
//! reflection serves.
//!
//! `protoc` comes from `protoc-bin-vendored` so that a fresh machine needs
//! nothing installed; setting `PROTOC` (and optionally `PROTOC_INCLUDE`)
//! chooses another one.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/loraflow/v1/common.proto",
    "proto/loraflow/v1/workflow.proto",
    "proto/loraflow/v1/catalogue.proto",
    "proto/loraflow/v1/jobs.proto",
    "proto/loraflow/v1/executors.proto",
    "proto/loraflow/v1/artifacts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=PROTOC_INCLUDE");
    println!("cargo:rerun-if-changed=proto");
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();

    let mut includes = vec![PathBuf::from("proto")];
    let mut config = tonic_prost_build::Config::new();
    // Passing the path to the config, rather than exporting PROTOC, avoids
    // `std::env::set_var`, which is unsafe in edition 2024.
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        // The vendored compiler ships the google/protobuf/*.proto well-known
        // types beside it.
        includes.push(protoc_bin_vendored::include_path()?);
    }

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Ordered maps: deterministic encoding and iteration, and the same
        // map type as the domain (`BTreeMap`), so conversions move maps as
        // they are.
        .btree_map(".")
        // Undecodable bytes are the sender's fault: `INVALID_ARGUMENT`
        // (src/codec.rs), not tonic-prost's `INTERNAL`.
        .codec_path("crate::codec::WireCodec")
        .file_descriptor_set_path(out.join("loraflow_v1_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
