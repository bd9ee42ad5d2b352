use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::catalogue::{Catalogue, Engine};
use crate::ids::StepId;

fn wf(steps: Vec<StepSpec>) -> WorkflowSpec {
    WorkflowSpec { steps }
}

fn fields(spec: &WorkflowSpec) -> Vec<String> {
    spec.validate(&KnownKinds::builtin())
        .unwrap_err()
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect()
}

fn gated(mut steps: Vec<StepSpec>, before_gate: &[&str]) -> WorkflowSpec {
    steps.push(StepSpec::new("review", StepKind::REVIEW).after(before_gate));
    steps.push(StepSpec::new("publish", StepKind::PUBLISH).after(&["review"]));
    wf(steps)
}

#[test]
fn standard_template_is_valid_and_ordered() {
    let c = Catalogue::builtin();
    let sd15 = c.base_model(&"sd15".into()).unwrap();
    let spec = standard_lora(sd15, Engine::Native);
    let dag = spec.validate(&KnownKinds::builtin()).unwrap();
    let order: Vec<_> = dag
        .topological()
        .map(|s| s.id.as_str().to_owned())
        .collect();
    assert_eq!(
        order,
        ["validate", "label", "train", "sample", "review", "publish"]
    );
    let train = dag.step(&"train".into()).unwrap();
    assert!(train.requires.gpu);
    assert_eq!(train.requires.min_vram_gb, Some(8));
    assert_eq!(train.requires.engine, Some(Engine::Native));
}

#[test]
fn cpu_model_template_needs_no_gpu() {
    let c = Catalogue::builtin();
    let tiny = c.base_model(&"tiny-sd".into()).unwrap();
    let spec = standard_lora(tiny, Engine::Native);
    assert!(!spec.step(&"train".into()).unwrap().requires.gpu);
}

#[test]
fn empty_workflow_is_rejected() {
    assert_eq!(
        fields(&wf(vec![])),
        ["workflow.steps: workflow is empty; add at least a review and a publish step"]
    );
}

#[test]
fn all_problems_reported_at_once_each_naming_its_step() {
    let spec = gated(
        vec![
            StepSpec::new("a", "train"),
            StepSpec::new("a", "label"),
            StepSpec::new("b", "paint").after(&["a", "ghost"]),
            StepSpec::new("c", "sample").after(&["c"]),
        ],
        &["a", "b", "c"],
    );
    let got = fields(&spec);
    assert!(
        got.iter()
            .any(|m| m.starts_with("workflow.steps.a: duplicate step id \"a\"")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|m| m.contains("workflow.steps.b.kind: unknown step kind \"paint\"")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|m| m.contains("step b depends on unknown step \"ghost\"")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("step c depends on itself")),
        "{got:?}"
    );
    assert_eq!(got.len(), 4, "{got:?}");
}

#[test]
fn cycle_names_the_steps_on_it() {
    let spec = gated(
        vec![
            StepSpec::new("x", "label").after(&["z"]),
            StepSpec::new("y", "train").after(&["x"]),
            StepSpec::new("z", "sample").after(&["y"]),
            StepSpec::new("free", "validate_dataset"),
        ],
        &["z", "free"],
    );
    assert_eq!(
        fields(&spec),
        ["workflow.steps.x.depends_on: steps x, y, z depend on each other in a cycle"]
    );
}

#[test]
fn custom_kinds_are_accepted_once_registered() {
    let spec = gated(vec![StepSpec::new("up", "upscale")], &["up"]);
    assert!(spec.validate(&KnownKinds::builtin()).is_err());
    assert!(
        spec.validate(&KnownKinds::builtin().with("upscale"))
            .is_ok()
    );
}

#[test]
fn gate_structure_is_enforced() {
    let no_gate = wf(vec![
        StepSpec::new("t", "train"),
        StepSpec::new("p", "publish").after(&["t"]),
    ]);
    assert!(
        fields(&no_gate)
            .iter()
            .any(|m| m.contains("exactly one review gate (kind review), found 0"))
    );

    let publish_first = wf(vec![
        StepSpec::new("p", "publish"),
        StepSpec::new("r", "review").after(&["p"]),
    ]);
    assert!(
        fields(&publish_first)
            .iter()
            .any(|m| m.contains("publish step p must come after the review gate r"))
    );

    let dangling = gated(
        vec![StepSpec::new("t", "train"), StepSpec::new("late", "sample")],
        &["t"],
    );
    assert_eq!(
        fields(&dangling),
        [
            "workflow.steps.late: step late must finish before the review gate review; add it to the gate's depends_on"
        ]
    );
}

#[test]
fn contradictory_requirements_and_retry_settings_are_rejected() {
    let mut t = StepSpec::new("t", "train");
    t.requires.min_vram_gb = Some(24);
    t.retry.max_attempts = 0;
    t.retry.jitter = 2.0;
    t.timeouts.heartbeat = Duration::ZERO;
    let got = fields(&gated(vec![t], &["t"]));
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[0].contains("min_vram_gb without gpu = true"));
}

#[test]
fn backoff_grows_is_capped_and_jitter_is_bounded_and_deterministic() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_secs(10),
        backoff_multiplier: 2.0,
        max_backoff: Duration::from_secs(60),
        jitter: 0.0,
    };
    assert_eq!(p.backoff(2, 7), Duration::from_secs(10));
    assert_eq!(p.backoff(3, 7), Duration::from_secs(20));
    assert_eq!(p.backoff(9, 7), Duration::from_secs(60));
    let j = RetryPolicy { jitter: 0.2, ..p };
    for seed in [0u64, 1, u64::MAX, 0xdead_beef, 1 << 63] {
        let d = j.backoff(2, seed).as_secs_f64();
        assert!((8.0..=12.0).contains(&d), "{d}");
        assert_eq!(j.backoff(2, seed), j.backoff(2, seed));
    }
    assert_ne!(j.backoff(2, 1), j.backoff(2, u64::MAX));
}

#[test]
fn spec_roundtrips_through_toml() {
    let c = Catalogue::builtin();
    let spec = standard_lora(c.base_model(&"sd15".into()).unwrap(), Engine::Kohya);
    let text = toml::to_string(&spec).unwrap();
    assert!(text.contains("start_to_close = \"12h\""), "{text}");
    let back: WorkflowSpec = toml::from_str(&text).unwrap();
    assert_eq!(back, spec);
}

/// A random DAG: step i may depend only on steps before it, then the steps are
/// shuffled so that declaration order says nothing.
fn arb_dag() -> impl Strategy<Value = WorkflowSpec> {
    (1usize..24)
        .prop_flat_map(|n| {
            let edges = proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n);
            (
                Just(n),
                edges,
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )
        })
        .prop_map(|(n, edges, order)| {
            let steps = order
                .into_iter()
                .map(|i| {
                    let deps: Vec<String> = (0..i)
                        .filter(|j| edges[i][*j])
                        .map(|j| format!("s{j}"))
                        .collect();
                    let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                    StepSpec::new(format!("s{i}").as_str(), "train").after(&deps)
                })
                .collect();
            let _ = n;
            WorkflowSpec { steps }
        })
}

proptest! {
    #[test]
    fn completing_ready_steps_in_any_order_finishes_the_graph(
        spec in arb_dag(),
        picks in proptest::collection::vec(any::<usize>(), 64),
    ) {
        let dag = Dag::build(&spec).expect("acyclic by construction");
        let mut progress: BTreeMap<StepId, Progress> = BTreeMap::new();
        let mut done = 0;
        let mut pick = picks.into_iter().cycle();
        loop {
            let ready: Vec<StepId> = dag.ready(&progress).into_iter().map(|s| s.id.clone()).collect();
            for id in &ready {
                let step = dag.step(id).unwrap();
                for dep in &step.depends_on {
                    prop_assert_eq!(progress.get(dep), Some(&Progress::Done), "{} ready before {}", id, dep);
                }
            }
            if ready.is_empty() {
                break;
            }
            // Start some, finish one: a ready step stays ready-or-started, never lost.
            let chosen = &ready[pick.next().unwrap() % ready.len()];
            progress.insert(chosen.clone(), Progress::Started);
            prop_assert!(!dag.ready(&progress).iter().any(|s| &s.id == chosen));
            progress.insert(chosen.clone(), Progress::Done);
            done += 1;
        }
        prop_assert_eq!(done, spec.steps.len());
        prop_assert!(progress.values().all(|p| *p == Progress::Done));
    }

    #[test]
    fn a_back_edge_is_always_reported_as_a_cycle(spec in arb_dag(), a in any::<usize>(), b in any::<usize>()) {
        let n = spec.steps.len();
        prop_assume!(n >= 2);
        let (lo, hi) = { let (x, y) = (a % n, b % n); (x.min(y), x.max(y)) };
        prop_assume!(lo != hi);
        // Make s_lo depend on s_hi, and s_hi on s_lo: a two-step cycle at least.
        let mut spec = spec;
        for s in &mut spec.steps {
            if s.id.as_str() == format!("s{lo}") { s.depends_on.push(format!("s{hi}").as_str().into()); }
            if s.id.as_str() == format!("s{hi}") && !s.depends_on.iter().any(|d| d.as_str() == format!("s{lo}")) {
                s.depends_on.push(format!("s{lo}").as_str().into());
            }
        }
        let err = spec.validate(&KnownKinds::builtin()).unwrap_err();
        let cycle = err.iter().find(|v| v.description.contains("cycle")).expect("cycle reported");
        let lo_named = format!("s{lo}");
        let hi_named = format!("s{hi}");
        prop_assert!(cycle.description.split(&[' ', ','][..]).any(|w| w == lo_named));
        prop_assert!(cycle.description.split(&[' ', ','][..]).any(|w| w == hi_named));
    }
}

#[test]
fn step_params_must_be_a_table() {
    let mut t = StepSpec::new("t", "train");
    t.params = serde_json::json!([1, 2]);
    let got = fields(&gated(vec![t], &["t"]));
    assert_eq!(
        got,
        ["workflow.steps.t.params: params of step t must be a table of settings, not [1,2]"]
    );
}
