//! The OpenAPI document describes the JSON the API really sends: a job is
//! driven over real loopback HTTP (create, validate-only, get, list,
//! history, catalogue, parameter schema, service status, executors,
//! webhook deliveries, verification, approve, refusals), and every answer
//! is checked against the JSON Schema the document declares for its path,
//! method and status (`$ref`s into `#/components/schemas` resolved by the
//! `jsonschema` crate, draft 2020-12 as OpenAPI 3.1 uses it). Request
//! bodies are checked against their closed schemas too, and the checker is
//! shown to reject wrong answers, so passing means something.

use crate::common;

use std::time::Duration;

use common::http::{HttpServer, client};
use common::server::{Backend, ServerSetup, TestServer};
use common::*;
use serde_json::{Value, json};

/// The OpenAPI document and a checker of its schemas.
struct Doc(Value);

impl Doc {
    /// The schema of `method path`'s answer with `status` (else the
    /// `default` answer), with the document's components beside it so that
    /// its `$ref`s resolve.
    fn response_schema(&self, method: &str, path: &str, status: u16) -> Value {
        let op = &self.0["paths"][path][method];
        assert!(op.is_object(), "the document has no {method} {path}");
        let responses = &op["responses"];
        let answer = match &responses[status.to_string()] {
            Value::Null => &responses["default"],
            a => a,
        };
        let schema = &answer["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} declares no JSON schema for {status}: {answer}"
        );
        self.rooted(schema)
    }

    /// The schema of `method path`'s request body.
    fn request_schema(&self, method: &str, path: &str) -> Value {
        let schema =
            &self.0["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path} declares no JSON body");
        self.rooted(schema)
    }

    /// The component schema `name`.
    fn component(&self, name: &str) -> Value {
        self.rooted(&json!({"$ref": format!("#/components/schemas/{name}")}))
    }

    fn rooted(&self, schema: &Value) -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.0["components"],
            "allOf": [schema],
        })
    }

    /// The reasons `value` does not match `schema`; empty when it does.
    fn errors(schema: &Value, value: &Value) -> Vec<String> {
        let validator = jsonschema::draft202012::new(schema)
            .unwrap_or_else(|e| panic!("the document's schema does not compile: {e}\n{schema}"));
        validator
            .iter_errors(value)
            .map(|e| e.to_string())
            .collect()
    }

    /// Panic unless `value` (the answer to `method path` with `status`)
    /// matches the schema the document declares for it.
    fn check(&self, method: &str, path: &str, status: u16, value: &Value) {
        let schema = self.response_schema(method, path, status);
        let errors = Self::errors(&schema, value);
        assert!(
            errors.is_empty(),
            "{method} {path} answered {status} with JSON that its schema refuses:\n{}\n{}",
            errors.join("\n"),
            serde_json::to_string_pretty(value).unwrap()
        );
    }
}

/// A new job's spec as JSON (the tenant comes from the token).
fn spec_json(uri: &str) -> Value {
    let mut v = serde_json::to_value(spec(uri)).unwrap();
    v.as_object_mut().unwrap().remove("tenant");
    v
}

async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    });
    (status, body)
}

/// `GET url`, checked against the document's `template` path.
async fn get(doc: &Doc, h: &HttpServer, template: &str, url: &str) -> (u16, Value) {
    let (status, body) = call(client().get(h.url(url)).bearer_auth("t-acme")).await;
    doc.check("get", template, status, &body);
    (status, body)
}

/// `POST url` with `body`, both checked against the document's `template`.
async fn post(doc: &Doc, h: &HttpServer, template: &str, url: &str, body: Value) -> (u16, Value) {
    let errors = Doc::errors(&doc.request_schema("post", template), &body);
    assert!(
        errors.is_empty(),
        "the body sent to {url} does not match its schema: {errors:?}\n{body}"
    );
    let (status, answer) = call(
        client()
            .post(h.url(url))
            .bearer_auth("t-acme")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap()),
    )
    .await;
    doc.check("post", template, status, &answer);
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_schema_the_document_declares() {
    let setup = ServerSetup {
        executors: true,
        ..Default::default()
    };
    let Some(s) = TestServer::start(Backend::Sqlite, setup).await else {
        return;
    };
    let h = HttpServer::start(&s).await;
    let (status, doc) = call(client().get(h.url("/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let doc = Doc(doc);

    // No domain payload is left as a bare object.
    let schemas = doc.0["components"]["schemas"].as_object().unwrap();
    for name in [
        "JobStatus",
        "JobSpec",
        "NewJobSpec",
        "StepView",
        "StepStatus",
        "EpochOutput",
        "Artifact",
        "Failure",
        "FailureReason",
        "ParamValue",
        "EffectiveParam",
        "BaseModel",
        "ServiceStatus",
        "Capabilities",
        "Delivery",
        "DeliveryAttempt",
        "JobEvent",
        "ErrorDetail",
        "FieldViolation",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    // Epochs are keyed by a number written as a string.
    let epochs = &schemas["JobStatus"]["properties"]["epochs"];
    assert_eq!(
        epochs["additionalProperties"]["$ref"], "#/components/schemas/EpochOutput",
        "{epochs}"
    );
    assert_ne!(epochs["propertyNames"]["type"], "integer", "{epochs}");
    // Request bodies are closed, as the server refuses unknown fields.
    for name in [
        "CreateJob",
        "Approve",
        "WithReason",
        "NewJobSpec",
        "JobSpec",
    ] {
        assert_eq!(
            schemas[name]["additionalProperties"],
            json!(false),
            "{name} is not closed"
        );
    }
    let job_of_create = &schemas["CreateJob"]["properties"]["job"]["$ref"];
    assert_eq!(job_of_create, "#/components/schemas/NewJobSpec");
    assert!(
        !schemas["NewJobSpec"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("tenant")),
        "the token gives the tenant"
    );

    // Catalogue, parameters, service, fleet.
    get(&doc, &h, "/v1/base-models", "/v1/base-models").await;
    let (st, params) = get(
        &doc,
        &h,
        "/v1/parameter-schema",
        "/v1/parameter-schema?base_model=tiny-sd&engine=native",
    )
    .await;
    assert_eq!(st, 200, "{params}");
    assert!(!params["params"].as_array().unwrap().is_empty());
    let (st, service) = get(&doc, &h, "/v1/service-status", "/v1/service-status").await;
    assert_eq!(st, 200, "{service}");
    let (st, fleet) = get(&doc, &h, "/v1/executors", "/v1/executors").await;
    assert_eq!(st, 200, "{fleet}");

    // A job: validate only, create, follow, approve.
    let spec = spec_json(&s.dataset_uri);
    let (st, valid) = post(
        &doc,
        &h,
        "/v1/jobs",
        "/v1/jobs",
        json!({"job": spec, "validate_only": true}),
    )
    .await;
    assert_eq!(st, 200, "{valid}");
    assert_eq!(valid["valid"], true);
    let (st, created) = post(&doc, &h, "/v1/jobs", "/v1/jobs", json!({"job": spec})).await;
    assert_eq!(st, 200, "{created}");
    let id = created["status"]["job_id"].as_str().unwrap().to_owned();
    let job_path = format!("/v1/jobs/{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let job = loop {
        let (st, job) = get(&doc, &h, "/v1/jobs/{job_id}", &job_path).await;
        assert_eq!(st, 200, "{job}");
        if job["status"]["state"] == "InReview" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not reach review: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The answer that matters most carries epochs, samples, steps, params.
    let epochs = job["status"]["epochs"].as_object().unwrap();
    assert!(!epochs.is_empty(), "{job}");
    assert!(epochs.keys().all(|k| k.parse::<u32>().is_ok()));
    let first_epoch: u32 = epochs.keys().next().unwrap().parse().unwrap();
    assert!(!job["status"]["steps"].as_array().unwrap().is_empty());

    let (st, page) = get(&doc, &h, "/v1/jobs", "/v1/jobs?page_size=5").await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let (st, history) = get(
        &doc,
        &h,
        "/v1/jobs/{job_id}/history",
        &format!("{job_path}/history"),
    )
    .await;
    assert_eq!(st, 200, "{history}");
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for t in [
        "JobCreated",
        "JobSubmitted",
        "StepQueued",
        "StepLeased",
        "StepProgressed",
        "StepCompleted",
        "ReviewRequested",
    ] {
        assert!(types.contains(&t), "no {t} in {types:?}");
    }
    let (st, verification) = get(
        &doc,
        &h,
        "/v1/jobs/{job_id}/verification",
        &format!("{job_path}/verification"),
    )
    .await;
    assert_eq!(st, 200, "{verification}");
    let (st, deliveries) = get(
        &doc,
        &h,
        "/v1/jobs/{job_id}/webhook-deliveries",
        &format!("{job_path}/webhook-deliveries"),
    )
    .await;
    assert_eq!(st, 200, "{deliveries}");

    // Refusals: AIP-193 bodies, with field violations.
    let (st, bad) = post(
        &doc,
        &h,
        "/v1/jobs/{job_id}/approve",
        &format!("{job_path}/approve"),
        json!({"epoch": 99}),
    )
    .await;
    assert!(st >= 400, "{bad}");
    let (st, missing) = get(&doc, &h, "/v1/jobs/{job_id}", "/v1/jobs/no-such-job").await;
    assert!(st == 404 || st == 400, "{missing}");
    let (st, unknown) = call(
        client()
            .post(h.url("/v1/jobs"))
            .bearer_auth("t-acme")
            .header("content-type", "application/json")
            .body(r#"{"job": {}, "colour": "red"}"#),
    )
    .await;
    assert_eq!(st, 400);
    doc.check("post", "/v1/jobs", st, &unknown);
    let named = unknown["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
        .any(|v| v["field"] == "colour");
    assert!(named, "{unknown}");

    let (st, approved) = post(
        &doc,
        &h,
        "/v1/jobs/{job_id}/approve",
        &format!("{job_path}/approve"),
        json!({"epoch": first_epoch, "etag": job["etag"]}),
    )
    .await;
    assert_eq!(st, 200, "{approved}");

    // The checker is not vacuous: wrong answers are refused.
    let job_schema = doc.response_schema("get", "/v1/jobs/{job_id}", 200);
    assert!(Doc::errors(&job_schema, &job).is_empty());
    let mut wrong = job.clone();
    wrong["status"]["state"] = json!(42);
    assert!(
        !Doc::errors(&job_schema, &wrong).is_empty(),
        "a state that is a number"
    );
    let mut wrong = job.clone();
    wrong["status"]["state"] = json!("Sleeping");
    assert!(
        !Doc::errors(&job_schema, &wrong).is_empty(),
        "a state not in the enum"
    );
    let mut wrong = job.clone();
    wrong.as_object_mut().unwrap().remove("etag");
    assert!(!Doc::errors(&job_schema, &wrong).is_empty(), "no etag");
    let mut wrong = job.clone();
    let first = epochs.keys().next().unwrap().clone();
    wrong["status"]["epochs"][&first]["epoch"] = json!("one");
    assert!(
        !Doc::errors(&job_schema, &wrong).is_empty(),
        "an epoch that is a string"
    );
    let mut wrong = job.clone();
    wrong["status"]["steps"][0]["status"] = json!({"Leased": {"attempt": 1}});
    assert!(
        !Doc::errors(&job_schema, &wrong).is_empty(),
        "a lease without its fields"
    );
    let error_schema = doc.response_schema("get", "/v1/jobs/{job_id}", 404);
    let mut wrong = missing.clone();
    wrong["error"]["details"] = json!([{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": 3}]}]);
    assert!(
        !Doc::errors(&error_schema, &wrong).is_empty(),
        "a field that is a number"
    );
    let create_body = doc.request_schema("post", "/v1/jobs");
    assert!(
        !Doc::errors(&create_body, &json!({"job": spec, "colour": "red"})).is_empty(),
        "an unknown field of a request"
    );
    let mut wrong_spec = spec.clone();
    wrong_spec["params"] = json!({"epochs": [2]});
    assert!(
        !Doc::errors(&create_body, &json!({"job": wrong_spec})).is_empty(),
        "a parameter value that is a list"
    );
    let param = doc.component("ParamValue");
    for ok in [json!(3), json!(0.5), json!(true), json!("adamw")] {
        assert!(Doc::errors(&param, &ok).is_empty(), "{ok}");
    }

    h.stop().await;
    s.stop().await;
}
