//! One truth for parameters, over real loopback gRPC on SQLite and
//! PostgreSQL: `GetParameterSchema` offers each engine exactly the values its
//! parameter mapping runs (the tables in `loraflow-executors`), and a value
//! the engine cannot run is refused at submit with `INVALID_ARGUMENT` naming
//! the parameter, writing nothing. The walk of every choice and bound through
//! the mappings themselves is `crates/executors/tests/params_truth.rs`.

use crate::common;
use crate::on_both_backends;

use std::collections::BTreeSet;

use common::server::{Backend, ServerSetup, TestServer};
use common::spec;
use loraflow::executors::{kohya, native};
use loraflow_proto::pb::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

on_both_backends! {
    async fn the_schema_offers_what_the_engine_runs_and_submit_refuses_the_rest(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let mut c = s.client(Some("t-acme")).await;

        let schema = |model: &str, engine: &str| pb::GetParameterSchemaRequest {
            base_model: model.into(),
            engine: engine.into(),
        };
        let native_schema = c.get_parameter_schema(schema("tiny-sd", "native")).await.unwrap().into_inner();
        let param = |r: &pb::GetParameterSchemaResponse, name: &str| {
            r.params.iter().find(|p| p.name == name).cloned().unwrap()
        };
        assert_eq!(
            set(param(&native_schema, "lr_scheduler").choices.iter().map(String::as_str)),
            set(native::params::LR_SCHEDULERS.map(|(n, _)| n))
        );
        assert_eq!(
            set(param(&native_schema, "optimizer").choices.iter().map(String::as_str)),
            set(native::params::OPTIMIZERS)
        );
        assert_eq!(param(&native_schema, "resolution").multiple_of, Some(16));
        let kohya_schema = c.get_parameter_schema(schema("sd15", "kohya")).await.unwrap().into_inner();
        assert_eq!(
            set(param(&kohya_schema, "optimizer").choices.iter().map(String::as_str)),
            set(kohya::params::OPTIMIZERS.map(|(n, _)| n))
        );
        assert_eq!(param(&kohya_schema, "resolution").multiple_of, None);

        let before = s.engine.store().feed().head().await.unwrap();
        for (name, value, says) in [
            ("resolution", pb::param_value::Kind::IntValue(63), "resolution 63 is not a multiple of 16"),
            ("lr_scheduler", pb::param_value::Kind::StringValue("cosine_with_restarts".into()), "\"cosine_with_restarts\" is not one of"),
            ("optimizer", pb::param_value::Kind::StringValue("adamw8bit".into()), "\"adamw8bit\" is not one of"),
        ] {
            let mut job: pb::JobSpec = spec(&s.dataset_uri).into();
            job.params.insert(name.into(), pb::ParamValue { kind: Some(value) });
            let err = c
                .create_job(pb::CreateJobRequest { job: Some(job), request_id: String::new(), validate_only: false })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            let v = err.get_error_details().bad_request().unwrap().field_violations.clone();
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].field, format!("job.params.{name}"));
            assert!(v[0].description.contains(says), "{}", v[0].description);
        }
        assert_eq!(s.engine.store().feed().head().await.unwrap(), before, "nothing was written");

        // The same values on an engine that runs them are accepted.
        let mut job: pb::JobSpec = spec(&s.dataset_uri).into();
        job.params.insert("resolution".into(), pb::ParamValue { kind: Some(pb::param_value::Kind::IntValue(48)) });
        c.create_job(pb::CreateJobRequest { job: Some(job), request_id: String::new(), validate_only: false }).await.unwrap();
        s.stop().await;
    }
}
