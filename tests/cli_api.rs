//! The whole client API from the `loraflow` command line, against a real
//! `loraflow serve` process: `models`, `params`, `service-status`, `retry`,
//! `webhooks`, `executors` (with a real worker connected over gRPC), `watch`
//! into a pipe, and gRPC reflection v1alpha beside v1. Each command is also
//! run into a refusal (unknown job, unknown model, another tenant's job),
//! which must exit 1 and say why on stderr.

use crate::common;

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::process::{Server, start};
use common::worker::bare_worker;
use loraflow::core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::job::{StepError, StepErrorKind};
use loraflow::core::workflow::StepKind;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[[auth.tenants]]
tenant = "acme"
token = "t-acme"
webhook_secret = "a-long-random-webhook-secret-for-acme"

[[auth.tenants]]
tenant = "other"
token = "t-other"

[[auth.executors]]
executor = "gpu-1"
token = "e-gpu-1"
"#;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command succeeded; its stdout.
fn ok(o: Output) -> String {
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    stdout(&o)
}

/// The command was refused with exit code 1; its stderr.
fn refused(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    stderr(&o)
}

/// Each line of stdout as JSON.
fn json_lines(o: Output) -> Vec<serde_json::Value> {
    ok(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn catalogue_and_service_commands_answer_and_refuse_with_reasons() {
    let server = start(CONFIG, &[]);

    let text = ok(server.cli("t-acme", &["models"]));
    assert!(text.starts_with("MODEL"), "{text}");
    assert!(text.contains("tiny-sd"), "{text}");
    let models = json_lines(server.cli("t-acme", &["models", "list", "--json"]));
    let tiny = models
        .iter()
        .find(|m| m["id"] == "tiny-sd")
        .expect("tiny-sd is in the catalogue");
    assert!(
        tiny["engines"]
            .as_array()
            .unwrap()
            .contains(&"native".into())
    );
    let no_token = common::process::bin()
        .args(["models"])
        .env("LORAFLOW_SERVER", server.url())
        .output()
        .unwrap();
    assert!(refused(no_token).contains("--token"));

    let text = ok(server.cli("t-acme", &["params", "tiny-sd"]));
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("NAME") && header.contains("DEFAULT"),
        "{text}"
    );
    let lr = text
        .lines()
        .find(|l| l.starts_with("learning_rate "))
        .unwrap_or_else(|| panic!("no learning_rate row: {text}"));
    assert!(lr.contains("float") && lr.contains(".."), "{lr}");
    let schema = &json_lines(server.cli("t-acme", &["params", "tiny-sd", "--json"]))[0];
    assert_eq!(schema["engine"], "native");
    let epochs = schema["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "epochs")
        .expect("an epochs parameter");
    assert_eq!(epochs["type"], "int");
    assert!(
        epochs["default"].is_i64() && epochs["max"].is_number(),
        "{epochs}"
    );
    let unknown = refused(server.cli("t-acme", &["params", "no-such-model"]));
    assert!(unknown.contains("no-such-model") && unknown.contains("not in the catalogue"));
    let bad_engine = refused(server.cli("t-acme", &["params", "tiny-sd", "--engine", "nope"]));
    assert!(bad_engine.contains("engine"), "{bad_engine}");

    let text = ok(server.cli("t-acme", &["service-status"]));
    assert!(text.contains("available     yes"), "{text}");
    let status = &json_lines(server.cli("t-other", &["service-status", "--json"]))[0];
    assert_eq!(status["tenant"], "other");
    assert_eq!(status["available"], true);
    assert!(status["max_images"].as_u64().unwrap() > 0);
    let bad = refused(server.cli("t-nobody", &["service-status"]));
    assert!(bad.contains("--token"), "{bad}");

    // No executor is connected: an empty list, said on stderr.
    let none = server.cli("t-acme", &["executors"]);
    assert_eq!(ok(none.clone()), "");
    assert!(stderr(&none).contains("no executor"), "{}", stderr(&none));
    let negative = refused(server.cli("t-acme", &["executors", "--page-size=-1"]));
    assert!(negative.contains("page_size"), "{negative}");

    reflection_v1alpha_lists_the_services(&server);
}

/// Tools that ask reflection v1alpha first (older grpcurl, Postman, Evans)
/// get the services, as v1 clients do.
fn reflection_v1alpha_lists_the_services(server: &Server) {
    use futures::StreamExt;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reflection = ServerReflectionClient::new(channel);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("loraflow.v1.JobService".into()),
        ]
        .map(|m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        });
        let mut replies = reflection
            .server_reflection_info(futures::stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            replies.next().await.unwrap().unwrap().message_response
        else {
            panic!("no service list")
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        for service in ["loraflow.v1.JobService", "loraflow.v1.ExecutorService"] {
            assert!(names.contains(&service.to_owned()), "{names:?}");
        }
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            replies.next().await.unwrap().unwrap().message_response
        else {
            panic!("no file descriptor for JobService")
        };
        assert!(!files.file_descriptor_proto.is_empty());
    });
}

/// Holds every `validate_dataset` step it is given until the server tells
/// it to stop, so that a lease stays live while the test looks at it.
#[derive(Debug)]
struct Holding;

#[async_trait]
impl Executor for Holding {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::VALIDATE_DATASET.into()]
    }

    async fn run(&self, _: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        tokio::select! {
            _ = ctx.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        Err(StepError {
            kind: StepErrorKind::Cancelled,
            message: "stopped".into(),
            retryable: true,
        })
    }
}

/// Worker `gpu-1` with [`Holding`], on a thread and runtime of its own.
fn spawn_worker(server: &Server) -> (CancellationToken, std::thread::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let (addr, root, token) = (server.addr, server.dir().to_owned(), stop.clone());
    let thread = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let worker = bare_worker(addr, &root, 1, 1).with(Arc::new(Holding));
                worker.run(token).await
            });
    });
    (stop, thread)
}

#[test]
fn job_commands_and_the_fleet_from_the_command_line() {
    let server = start(CONFIG, &[]);
    common::dataset(&server.dir().join("photos"), 3);
    let (stop, worker) = spawn_worker(&server);

    let job = &json_lines(server.cli(
        "t-acme",
        &[
            "submit",
            "--base-model",
            "tiny-sd",
            "--dataset",
            "photos",
            "--subject",
            "corgi",
            // Nothing listens there: every delivery fails and is logged.
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--json",
        ],
    ))[0];
    let id = job["job_id"].as_str().unwrap().to_owned();

    // The worker holds the job's first step; its owner sees which one,
    // another tenant only that a slot is taken.
    let mine = eventually("the lease to show in `executors`", || {
        let list = json_lines(server.cli("t-acme", &["executors", "--json"]));
        let gpu = list.into_iter().find(|e| e["executor_id"] == "gpu-1")?;
        (!gpu["leases"].as_array().unwrap().is_empty()).then_some(gpu)
    });
    assert_eq!(mine["leases"][0]["job_id"], id.as_str());
    assert_eq!(mine["leases"][0]["step_id"], "validate");
    assert_eq!(mine["other_tenants_leases"], 0);
    assert_eq!(mine["slots"], 1);
    assert_eq!(mine["slots_used"], 1);
    assert_eq!(mine["kinds"], serde_json::json!(["validate_dataset"]));
    assert!(!mine["instance_id"].as_str().unwrap().is_empty());
    let theirs = &json_lines(server.cli("t-other", &["executors", "--json"]))[0];
    assert_eq!(theirs["executor_id"], "gpu-1");
    assert_eq!(theirs["leases"], serde_json::json!([]));
    assert_eq!(theirs["other_tenants_leases"], 1);
    let text = ok(server.cli("t-acme", &["executors"]));
    let row = text.lines().find(|l| l.starts_with("gpu-1")).unwrap();
    assert!(
        row.contains("1/1") && row.contains(&id) && row.contains("ago"),
        "{row}"
    );
    let text = ok(server.cli("t-other", &["executors"]));
    assert!(
        !text.contains(&id) && text.contains("+1 of other tenants"),
        "{text}"
    );

    // The webhook's deliveries are logged with their failed attempts.
    let deliveries = eventually("a webhook delivery attempt", || {
        let d = json_lines(server.cli("t-acme", &["webhooks", &id, "--json"]));
        d.iter()
            .any(|d| !d["attempts"].as_array().unwrap().is_empty())
            .then_some(d)
    });
    assert_eq!(deliveries[0]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(deliveries[0]["event_type"], "workflow:created");
    let text = ok(server.cli("t-acme", &["webhooks", &id]));
    assert!(
        text.trim_start().starts_with("SEQ") && text.contains("workflow:created"),
        "{text}"
    );
    let hidden = refused(server.cli("t-other", &["webhooks", &id]));
    assert!(
        hidden.contains("not found") || hidden.contains(&id),
        "{hidden}"
    );
    let unknown = refused(server.cli("t-acme", &["webhooks", "01JNOSUCHJOB"]));
    assert!(unknown.contains("01JNOSUCHJOB"), "{unknown}");

    // Only a failed job can be retried.
    let running = refused(server.cli("t-acme", &["retry", &id]));
    assert!(running.contains("cannot be retried"), "{running}");
    ok(server.cli(
        "t-acme",
        &["cancel", &id, "--reason", "wrong photos", "--json"],
    ));

    // Piped, `watch` prints one plain line per change, and the reason of
    // the failure on stderr with exit code 1.
    let watched = server.cli("t-acme", &["watch", &id]);
    let err = refused(watched.clone());
    assert!(
        err.contains(&format!("job {id} cancelled by")) && err.contains("wrong photos"),
        "{err}"
    );
    let lines = stdout(&watched);
    let lines: Vec<&str> = lines.lines().collect();
    assert!(lines.len() >= 4, "{lines:#?}");
    assert!(lines[0].contains("pending") && lines[0].contains("created job"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("validate") && l.contains("running on gpu-1")),
        "{lines:#?}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.contains("failed") && last.contains("wrong photos"),
        "{last}"
    );
    // Each line starts with the time the event was recorded.
    assert!(
        chrono::DateTime::parse_from_rfc3339(last.split_whitespace().next().unwrap()).is_ok(),
        "{last}"
    );

    // The failed job runs again as a new job; others cannot retry it.
    let hidden = refused(server.cli("t-other", &["retry", &id]));
    assert!(hidden.contains("cannot be retried"), "{hidden}");
    let unknown = refused(server.cli("t-acme", &["retry", "01JNOSUCHJOB"]));
    assert!(unknown.contains("01JNOSUCHJOB"), "{unknown}");
    let again = &json_lines(server.cli("t-acme", &["retry", &id, "--json"]))[0];
    let new_id = again["job_id"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(again["tenant"], "acme");
    assert_eq!(again["base_model"], "tiny-sd");

    stop.cancel();
    worker.join().unwrap();
}
