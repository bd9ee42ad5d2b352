//! The gRPC server as a transport, over real loopback sockets: message size
//! limits, health checking and reflection (on SQLite and PostgreSQL), TLS
//! with a certificate made for the test, and the tracing span of each call.

use crate::common;
use crate::on_both_backends;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::server::{Backend, ServerSetup, TestServer};
use common::*;
use futures::StreamExt;
use loraflow::config::TlsConfig;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::job_service_client::JobServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn create(uri: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        job: Some(spec(uri).into()),
        request_id: String::new(),
        validate_only: false,
    }
}

on_both_backends! {
    async fn an_oversized_request_is_resource_exhausted(backend: Backend) {
        let Some(s) = TestServer::start(
            backend,
            ServerSetup { max_message_bytes: Some(64 * 1024), ..Default::default() },
        )
        .await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let mut big = create(&s.dataset_uri);
        big.job.as_mut().unwrap().sample_prompts = vec!["x".repeat(100 * 1024)];
        let err = c.create_job(big).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        // The server is still there, and nothing was written.
        assert!(c.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty());
        s.stop().await;
    }

    async fn health_and_reflection_are_served(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
        for service in ["loraflow.v1.JobService", "loraflow.v1.ExecutorService"] {
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                reply.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service}"
            );
        }

        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse,
        };
        let mut reflection = ServerReflectionClient::new(s.channel().await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = reflection
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            replies.next().await.unwrap().unwrap().message_response
        else {
            panic!("no service list")
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        for service in ["loraflow.v1.JobService", "loraflow.v1.ExecutorService", "grpc.health.v1.Health"] {
            assert!(names.contains(&service.to_owned()), "{names:?}");
        }
        s.stop().await;
    }
}

/// A CA, and a certificate for `localhost` that it signed, as PEM files in `dir`.
struct TestPki {
    ca_pem: String,
    tls: TlsConfig,
}

fn test_pki(dir: &std::path::Path) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "loraflow test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &*ca)
        .unwrap();
    let tls = TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&tls.cert, server_cert.pem()).unwrap();
    std::fs::write(&tls.key, server_key.serialize_pem()).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        tls,
    }
}

/// A channel to the server over TLS, trusting `ca_pem`. The server listens
/// on 127.0.0.1; its certificate is checked against the name `localhost`.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let pki = test_pki(certs.path());
    let s = TestServer::start(
        Backend::Sqlite,
        ServerSetup {
            tls: Some(pki.tls.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let channel = tls_channel(s.addr, &pki.ca_pem).await.unwrap();
    let mut c = JobServiceClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", "Bearer t-acme".parse().unwrap());
        Ok(req)
    });
    let job = c
        .create_job(create(&s.dataset_uri))
        .await
        .unwrap()
        .into_inner();
    let listed = c
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(listed.jobs[0].job_id, job.job_id);

    // A client that trusts another CA is refused during the handshake.
    let other = test_pki(tempfile::tempdir().unwrap().path());
    let stranger = match tls_channel(s.addr, &other.ca_pem).await {
        Err(_) => None,
        Ok(ch) => Some(
            JobServiceClient::new(ch)
                .list_jobs(pb::ListJobsRequest::default())
                .await
                .unwrap_err(),
        ),
    };
    if let Some(err) = stranger {
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    // So is one speaking plaintext.
    let plain = Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let err = JobServiceClient::new(ch)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
        assert_ne!(
            err.code(),
            Code::Unauthenticated,
            "plaintext reached a handler"
        );
    }
    s.stop().await;
}

// ---------------------------------------------------------------- spans

/// Every `grpc` span opened in this process, with its fields as recorded.
type Spans = Arc<Mutex<HashMap<u64, HashMap<String, String>>>>;

struct FieldsOf<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for FieldsOf<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct Capture(Spans);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "grpc" {
            let mut fields = HashMap::new();
            attrs.record(&mut FieldsOf(&mut fields));
            self.0.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut FieldsOf(fields));
        }
    }
}

/// The spans captured by this test binary's global subscriber.
fn spans() -> Spans {
    static SPANS: OnceLock<Spans> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let spans = Spans::default();
            let subscriber = tracing_subscriber::registry().with(Capture(spans.clone()));
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            spans
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_a_span_with_its_tenant_and_job() {
    let spans = spans();
    let s = TestServer::start(Backend::Sqlite, ServerSetup::default())
        .await
        .unwrap();
    let mut c = s.client(Some("t-acme")).await;
    let job = c
        .create_job(create(&s.dataset_uri))
        .await
        .unwrap()
        .into_inner();
    c.list_jobs(pb::ListJobsRequest::default()).await.unwrap();
    c.get_service_status(pb::GetServiceStatusRequest::default())
        .await
        .unwrap();
    c.list_base_models(pb::ListBaseModelsRequest::default())
        .await
        .unwrap();
    c.get_parameter_schema(pb::GetParameterSchemaRequest {
        base_model: "tiny-sd".into(),
        engine: "native".into(),
    })
    .await
    .unwrap();
    c.cancel_job(pb::CancelJobRequest {
        job_id: job.job_id.clone(),
        reason: "done".into(),
        etag: String::new(),
    })
    .await
    .unwrap();
    let retried = c
        .retry_job(pb::RetryJobRequest {
            job_id: job.job_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    s.stop().await;

    let spans = spans.lock().unwrap();
    let find = |method: &str| -> Vec<&HashMap<String, String>> {
        spans
            .values()
            .filter(|f| f.get("method").map(String::as_str) == Some(method))
            .filter(|f| f.get("tenant").map(String::as_str) == Some("acme"))
            .collect()
    };
    // The job id of a new job is recorded once the engine has chosen it.
    assert!(
        find("CreateJob")
            .iter()
            .any(|f| f.get("job") == Some(&job.job_id)),
        "{spans:?}"
    );
    assert!(
        find("RetryJob").iter().any(|f| f.get("job") == Some(&job.job_id)
            && f.get("new_job") == Some(&retried.job_id)),
        "{spans:?}"
    );
    assert!(
        find("CancelJob")
            .iter()
            .any(|f| f.get("job") == Some(&job.job_id))
    );
    for method in [
        "ListJobs",
        "GetServiceStatus",
        "ListBaseModels",
        "GetParameterSchema",
    ] {
        assert!(!find(method).is_empty(), "no span of {method}: {spans:?}");
    }
    assert!(
        find("GetParameterSchema")
            .iter()
            .any(|f| f.get("base_model").map(String::as_str) == Some("tiny-sd"))
    );
}
