//! Failure edges over real loopback gRPC: bytes that do not decode as the
//! expected message (garbage, or step params nested past protobuf's
//! recursion limit) are the sender's fault, `INVALID_ARGUMENT` with reason
//! `MALFORMED_MESSAGE`, and write nothing; a refused value names its field
//! once. The `loraflow` binary's own edges (exit codes, closed stdout,
//! SIGTERM) are in `cli_edges.rs`.

use crate::common;
use crate::on_both_backends;

use bytes::{Buf, BufMut};
use common::server::{Backend, ServerSetup, TestServer};
use common::spec;
use loraflow_proto::codec::MALFORMED_MESSAGE;
use loraflow_proto::pb::v1 as pb;
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt;

/// Sends bytes as they are, as a client with a broken (or hostile) encoder
/// would; reads whatever comes back as bytes.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One unary call of `method` (`/loraflow.v1.JobService/CreateJob`) with `body` as its message.
async fn raw_call(s: &TestServer, method: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert("authorization", "Bearer t-acme".parse().unwrap());
    grpc.unary(req, http::uri::PathAndQuery::from_static(method), RawCodec)
        .await
        .expect_err("garbage was accepted")
}

/// Step params nested `depth` levels deep: `{"a": {"a": ... {"a": 1}}}`.
fn nested(depth: usize) -> prost_types::Struct {
    let mut value = prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(1.0)),
    };
    for _ in 0..depth {
        value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields: [("a".to_owned(), value)].into(),
            })),
        };
    }
    match value.kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => unreachable!(),
    }
}

fn assert_malformed(status: &tonic::Status, expected: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("not a valid loraflow.v1.{expected}")),
        "{}",
        status.message()
    );
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        MALFORMED_MESSAGE
    );
}

on_both_backends! {
    async fn undecodable_requests_are_invalid_argument_and_write_nothing(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let before = s.engine.store().feed().head().await.unwrap();

        // Bytes that are no protobuf at all (a field with wire type 7).
        let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        let status = raw_call(&s, "/loraflow.v1.JobService/CreateJob", garbage.clone()).await;
        assert_malformed(&status, "CreateJobRequest");
        // The executors' service decodes the same way.
        let status = raw_call(&s, "/loraflow.v1.ExecutorService/PollStep", garbage).await;
        assert_malformed(&status, "PollStepRequest");

        // A well-formed message cut short: a length prefix larger than what follows.
        let mut cut = pb::CreateJobRequest {
            job: Some(spec(&s.dataset_uri).into()),
            request_id: String::new(),
            validate_only: false,
        }
        .encode_to_vec();
        cut.truncate(cut.len() / 2);
        let status = raw_call(&s, "/loraflow.v1.JobService/CreateJob", cut).await;
        assert_malformed(&status, "CreateJobRequest");

        // Step params nested 45 levels deep exceed prost's recursion limit.
        let mut job: pb::JobSpec = spec(&s.dataset_uri).into();
        job.workflow = Some(pb::WorkflowSpec {
            steps: vec![pb::StepSpec {
                id: "deep".into(),
                kind: "validate_dataset".into(),
                params: Some(nested(45)),
                ..Default::default()
            }],
        });
        let deep = pb::CreateJobRequest { job: Some(job), request_id: String::new(), validate_only: false }.encode_to_vec();
        let status = raw_call(&s, "/loraflow.v1.JobService/CreateJob", deep).await;
        assert_malformed(&status, "CreateJobRequest");
        assert!(status.message().contains("recursion limit"), "{}", status.message());

        assert_eq!(s.engine.store().feed().head().await.unwrap(), before, "nothing was written");
        // The server still serves well-formed calls.
        let mut c = s.client(Some("t-acme")).await;
        let list = c.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
        assert!(list.jobs.is_empty());
        s.stop().await;
    }

    async fn a_refused_field_is_said_once_with_what_was_given(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let job = c
            .create_job(pb::CreateJobRequest { job: Some(spec(&s.dataset_uri).into()), request_id: String::new(), validate_only: false })
            .await
            .unwrap()
            .into_inner();
        let err = c
            .approve_job(pb::ApproveJobRequest { job_id: job.job_id.clone(), epoch: 0, etag: String::new(), step: None })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let violations = err.get_error_details().bad_request().unwrap().field_violations.clone();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "epoch");
        assert!(violations[0].description.starts_with("0 was given"), "{}", violations[0].description);
        // The message carries the violation once, for clients that ignore details.
        assert_eq!(err.message().matches("epochs count from 1").count(), 1, "{}", err.message());
        s.stop().await;
    }
}
