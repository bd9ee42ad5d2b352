//! OpenTelemetry trace export: a real OTLP/gRPC TraceService receiver on a
//! loopback port, a real `loraflow serve` (with its built-in executors)
//! configured to export to it, real HTTP and gRPC requests and a job's
//! steps. The request spans (`http`, `grpc`) and step spans (`step`) must
//! arrive with the configured `service.name`. A collector that accepts
//! connections but never answers must not stop the server from serving,
//! nor from exiting promptly on SIGTERM.

use crate::common;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Server, start};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// What the receiver was sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One received span: its service, name and string attributes.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Collector {
    /// Serve the OTLP TraceService on a loopback port.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (collector, addr)
    }

    fn spans(&self) -> Vec<Span> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(AnyValue::StringValue(s)) => s.clone(),
            Some(AnyValue::IntValue(i)) => i.to_string(),
            Some(AnyValue::BoolValue(b)) => b.to_string(),
            _ => String::new(),
        };
        let mut out = Vec::new();
        for request in self.0.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| text(&kv.value))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Span {
                            service: service.clone(),
                            name: s.name.clone(),
                            attributes: s
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(&kv.value)))
                                .collect(),
                        });
                    }
                }
            }
        }
        out
    }
}

const TOKENS: &str = r#"
[[auth.tenants]]
tenant = "acme"
token = "t-acme"
"#;

/// A free loopback port for the server's HTTP listener.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGTERM `server`; how long it took to exit.
fn terminate(server: &mut Server) -> Duration {
    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "the server exited with {status}");
            return asked.elapsed();
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the server did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_step_spans_reach_the_collector() {
    let (collector, addr) = Collector::start().await;
    let config = format!(
        "{TOKENS}\n[telemetry]\notlp_endpoint = \"http://{addr}\"\nservice_name = \"loraflow-otel-test\"\n"
    );
    let http = format!("127.0.0.1:{}", free_port());
    let mut server = start(&config, &["--with-executors", "--http", &http]);
    common::dataset(&server.dir().join("photos"), 3);

    // gRPC: the catalogue, then a job (its upload and creation).
    let models = server.cli("t-acme", &["models"]);
    assert!(models.status.success());
    let job = json(server.cli(
        "t-acme",
        &[
            "submit",
            "--base-model",
            "tiny-sd",
            "--dataset",
            "photos",
            "--subject",
            "corgi",
            "--json",
        ],
    ));
    let id = job["job_id"].as_str().unwrap().to_owned();

    // HTTP: the job and the service status, with the token.
    let web = common::http::client();
    let base = format!("http://{http}");
    for path in [format!("/v1/jobs/{id}"), "/v1/service-status".to_owned()] {
        let resp = web
            .get(format!("{base}{path}"))
            .bearer_auth("t-acme")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }

    // The job's first steps run in the server; wait for them to finish.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = json(server.cli("t-acme", &["status", &id, "--json"]));
        let done = status["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["status"] == "completed")
            .count();
        if done >= 2 || status["state"] == "in_review" || status["state"] == "failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job's first steps did not complete: {status}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Spans are batched; SIGTERM flushes what is left before exit.
    let took = terminate(&mut server);
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = collector.spans();
        let has = |name: &str| spans.iter().any(|s| s.name == name);
        if (has("http") && has("grpc") && has("step")) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(
        spans.iter().all(|s| s.service == "loraflow-otel-test"),
        "every span carries the configured service.name: {:?}",
        spans.iter().map(|s| &s.service).collect::<Vec<_>>()
    );
    let http_get = spans
        .iter()
        .find(|s| s.name == "http" && s.attribute("method") == Some("GetJob"))
        .unwrap_or_else(|| panic!("no http GetJob span among {names:?}"));
    assert_eq!(http_get.attribute("tenant"), Some("acme"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "grpc" && s.attribute("method") == Some("CreateJob")),
        "no grpc CreateJob span among {names:?}"
    );
    let step = spans
        .iter()
        .find(|s| s.name == "step")
        .unwrap_or_else(|| panic!("no step span among {names:?}"));
    assert_eq!(step.attribute("job"), Some(id.as_str()), "{step:?}");
    // The exporter's own transport is not traced.
    assert!(
        !names
            .iter()
            .any(|n| n.contains("h2") || n.starts_with("hyper")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_holds_up_neither_serving_nor_exit() {
    // Connections are accepted by the kernel, but nothing ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let config = format!("{TOKENS}\n[telemetry]\notlp_endpoint = \"http://{addr}\"\n");
    let http = format!("127.0.0.1:{}", free_port());
    let mut server = start(&config, &["--http", &http]);

    let web = common::http::client();
    let base = format!("http://{http}");
    // Enough requests for the batches to be tried (and time out) meanwhile.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let resp = web
            .get(format!("{base}/v1/service-status"))
            .bearer_auth("t-acme")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let models = server.cli("t-acme", &["models"]);
        assert!(models.status.success());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let asked = Instant::now();
    let health = web.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(asked.elapsed() < Duration::from_secs(2));

    let took = terminate(&mut server);
    assert!(
        took < loraflow::telemetry::FLUSH_WAIT + Duration::from_secs(3),
        "exit took {took:?} with a silent collector"
    );
    drop(silent);
}

#[test]
fn a_bad_endpoint_is_refused_with_its_field() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("loraflow.toml");
    std::fs::write(
        &path,
        format!("{TOKENS}\n[telemetry]\notlp_endpoint = \"collector:4317\"\n"),
    )
    .unwrap();
    let out = common::process::bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--store")
        .arg(format!("sqlite://{}", tmp.path().join("lf.db").display()))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
    assert!(err.contains("collector:4317"), "{err}");
}
