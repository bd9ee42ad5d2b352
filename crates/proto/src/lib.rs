pub mod pb {
    pub mod v1 {
        tonic::include_proto!("loraflow.v1");
    }
}
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("loraflow_v1_descriptor");
