//! An upload session survives a restart of the server: part of a file is
//! sent, the server stops and another process starts on the same store
//! and staging folder, and `StartUpload` with the session's id answers the
//! committed offset; the rest is sent, the digest checks, and the dataset
//! commits. Another tenant cannot take the session over. Real gRPC on
//! loopback sockets.

use crate::common;

use common::server::{Backend, ServerSetup, TestServer};
use loraflow::core::artifact::Sha256;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::artifact_service_client::ArtifactServiceClient;
use loraflow_proto::pb::v1::start_upload_request::Target as UploadTarget;
use tonic::Code;

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn client(server: &TestServer) -> ArtifactServiceClient<tonic::transport::Channel> {
    ArtifactServiceClient::new(server.channel().await)
}

/// `data[from..to]` as chunks of 256 KiB.
fn chunks(upload_id: &str, data: &[u8], from: usize, to: usize) -> Vec<pb::UploadChunk> {
    (from..to)
        .step_by(256 << 10)
        .map(|start| pb::UploadChunk {
            upload_id: upload_id.to_owned(),
            offset: start as u64,
            data: data[start..(start + (256 << 10)).min(to)].to_vec(),
        })
        .collect()
}

fn start_request(dataset: &str, data: &[u8], resume: &str) -> pb::StartUploadRequest {
    pb::StartUploadRequest {
        target: Some(UploadTarget::DatasetFile(pb::DatasetFileTarget {
            dataset_upload_id: dataset.to_owned(),
            name: "big.bin".into(),
        })),
        size_bytes: data.len() as u64,
        sha256: Sha256::of(data).0,
        upload_id: resume.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_resumes_from_its_committed_offset_after_a_server_restart() {
    let server = TestServer::start(Backend::Sqlite, ServerSetup::default())
        .await
        .unwrap();
    let data: Vec<u8> = (0..3 * (1 << 20) + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let half = 3 << 19;
    let mut c = client(&server).await;
    let dataset = c
        .start_dataset(authed(
            "t-acme",
            pb::StartDatasetRequest {
                files: vec![pb::RemoteFile {
                    name: "big.bin".into(),
                    size_bytes: data.len() as u64,
                    sha256: Sha256::of(&data).0,
                    uri: String::new(),
                }],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let session = c
        .start_upload(authed(
            "t-acme",
            start_request(&dataset.dataset_upload_id, &data, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    let sent = c
        .upload(authed(
            "t-acme",
            futures::stream::iter(chunks(&session.upload_id, &data, 0, half)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.committed_offset, half as u64);
    assert!(sent.uri.is_empty());

    // Another process on the same store and staging folder.
    let deployment = server.halt().await;
    let server = TestServer::start_in(&deployment, ServerSetup::default()).await;
    let mut c = client(&server).await;

    // Not another tenant's to resume.
    let denied = c
        .start_upload(authed(
            "t-globex",
            start_request(&dataset.dataset_upload_id, &data, &session.upload_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let resumed = c
        .start_upload(authed(
            "t-acme",
            start_request(&dataset.dataset_upload_id, &data, &session.upload_id),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.upload_id, session.upload_id);
    assert_eq!(resumed.committed_offset, half as u64, "not from zero");
    let done = c
        .upload(authed(
            "t-acme",
            futures::stream::iter(chunks(&session.upload_id, &data, half, data.len())),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.committed_offset, data.len() as u64);
    assert!(!done.uri.is_empty(), "stored once the digest checked");
    let committed = c
        .commit_dataset(authed(
            "t-acme",
            pb::CommitDatasetRequest {
                dataset_upload_id: dataset.dataset_upload_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.dataset_uri, dataset.dataset_uri);
    let stored = url::Url::parse(&committed.dataset_uri)
        .unwrap()
        .to_file_path()
        .unwrap()
        .join("big.bin");
    assert_eq!(
        Sha256::of(&std::fs::read(&stored).unwrap()),
        Sha256::of(&data)
    );
    server.stop().await;
}
