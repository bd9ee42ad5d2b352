//! Workflow validation: every problem at once, each naming its step.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;

use super::graph::Dag;
use super::spec::{StepKind, WorkflowSpec};
use crate::validation::Violations;

/// The step kinds some executor (or the engine, for the review gate) can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKinds(BTreeSet<String>);

impl KnownKinds {
    /// The built-in kinds only.
    pub fn builtin() -> Self {
        Self(StepKind::BUILTIN.iter().map(|k| (*k).to_owned()).collect())
    }

    /// Add a custom kind.
    pub fn with(mut self, kind: impl Into<String>) -> Self {
        self.0.insert(kind.into());
        self
    }

    pub fn contains(&self, kind: &StepKind) -> bool {
        self.0.contains(kind.as_str())
    }
}

impl Default for KnownKinds {
    fn default() -> Self {
        Self::builtin()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl WorkflowSpec {
    /// Check the workflow and build its DAG. Reports every problem found:
    /// empty workflow, bad or duplicate ids, unknown dependencies, cycles (with
    /// the steps on them), unknown kinds, contradictory requirements or retry
    /// settings, and the review/publish structure every LoRA job needs
    /// (exactly one `review` gate; exactly one `publish` step after it; every
    /// other step before the gate).
    pub fn validate(&self, kinds: &KnownKinds) -> Result<Dag, Violations> {
        let mut v = Violations::default();
        if self.steps.is_empty() {
            v.push(
                "workflow.steps",
                "workflow is empty; add at least a review and a publish step",
            );
            return Err(v);
        }

        let mut seen = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(first) = seen.insert(&step.id, i) {
                v.push(
                    format!("workflow.steps.{}", step.id),
                    format!(
                        "duplicate step id {:?} (steps #{first} and #{i})",
                        step.id.as_str()
                    ),
                );
            }
        }

        for step in &self.steps {
            let field = format!("workflow.steps.{}", step.id);
            if !valid_id(step.id.as_str()) {
                v.push(
                    &field,
                    format!(
                        "step id {:?} must be 1-64 characters of letters, digits, '_', '-' or '.'",
                        step.id.as_str()
                    ),
                );
            }
            if !kinds.contains(&step.kind) {
                v.push(
                    format!("{field}.kind"),
                    format!(
                        "unknown step kind {:?}; built-in kinds are {}, or register an executor for it",
                        step.kind.as_str(),
                        StepKind::BUILTIN.join(", ")
                    ),
                );
            }
            for dep in &step.depends_on {
                if dep == &step.id {
                    v.push(
                        format!("{field}.depends_on"),
                        format!("step {} depends on itself", step.id),
                    );
                } else if !seen.contains_key(dep) {
                    v.push(
                        format!("{field}.depends_on"),
                        format!(
                            "step {} depends on unknown step {:?}",
                            step.id,
                            dep.as_str()
                        ),
                    );
                }
            }
            if !(step.params.is_null() || step.params.is_object()) {
                v.push(
                    format!("{field}.params"),
                    format!(
                        "params of step {} must be a table of settings, not {}",
                        step.id, step.params
                    ),
                );
            }
            let r = &step.requires;
            if r.min_vram_gb.is_some_and(|g| g > 0) && !r.gpu {
                v.push(
                    format!("{field}.requires"),
                    format!("step {} asks for min_vram_gb without gpu = true; no executor can satisfy that", step.id),
                );
            }
            if step.kind.is_gate()
                && (r.gpu || r.engine.is_some() || r.min_vram_gb.is_some() || !r.labels.is_empty())
            {
                v.push(
                    format!("{field}.requires"),
                    format!("step {} is the review gate, which no executor runs; remove its requirements", step.id),
                );
            }
            let p = &step.retry;
            if p.max_attempts == 0 {
                v.push(
                    format!("{field}.retry.max_attempts"),
                    "max_attempts 0 would never run the step; use 1 or more",
                );
            }
            if !(p.backoff_multiplier >= 1.0 && p.backoff_multiplier.is_finite()) {
                v.push(
                    format!("{field}.retry.backoff_multiplier"),
                    format!(
                        "backoff_multiplier {} must be a number of at least 1",
                        p.backoff_multiplier
                    ),
                );
            }
            if !(0.0..=1.0).contains(&p.jitter) {
                v.push(
                    format!("{field}.retry.jitter"),
                    format!("jitter {} must be between 0 and 1", p.jitter),
                );
            }
            if step.timeouts.start_to_close.is_zero() || step.timeouts.heartbeat.is_zero() {
                v.push(
                    format!("{field}.timeouts"),
                    "timeouts must be longer than zero",
                );
            }
        }

        // Cycles, among the edges whose ends exist.
        let mut graph = DiGraph::<usize, ()>::new();
        let idx: Vec<_> = (0..self.steps.len()).map(|i| graph.add_node(i)).collect();
        for (i, step) in self.steps.iter().enumerate() {
            for dep in &step.depends_on {
                if let Some(&j) = seen.get(dep)
                    && j != i
                {
                    graph.add_edge(idx[j], idx[i], ());
                }
            }
        }
        for scc in tarjan_scc(&graph) {
            if scc.len() > 1 {
                let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
                members.sort_unstable();
                let names: Vec<&str> = members.iter().map(|i| self.steps[*i].id.as_str()).collect();
                v.push(
                    format!("workflow.steps.{}.depends_on", names[0]),
                    format!("steps {} depend on each other in a cycle", names.join(", ")),
                );
            }
        }

        if !v.is_empty() {
            return Err(v);
        }
        let dag = Dag::build(self).expect("validated above: acyclic with known dependencies");
        check_gates(&dag, &mut v);
        v.into_result(dag)
    }
}

fn check_gates(dag: &Dag, v: &mut Violations) {
    let steps = &dag.spec().steps;
    let of_kind = |k: &str| steps.iter().filter(|s| s.kind.is(k)).collect::<Vec<_>>();
    let reviews = of_kind(StepKind::REVIEW);
    let publishes = of_kind(StepKind::PUBLISH);
    if reviews.len() != 1 {
        v.push(
            "workflow.steps",
            format!(
                "a workflow needs exactly one review gate (kind review), found {}",
                reviews.len()
            ),
        );
    }
    if publishes.len() != 1 {
        v.push(
            "workflow.steps",
            format!(
                "a workflow needs exactly one publish step (kind publish), found {}",
                publishes.len()
            ),
        );
    }
    let (Some(review), Some(publish)) = (reviews.first(), publishes.first()) else {
        return;
    };
    if !dag.is_ancestor(&review.id, &publish.id) {
        v.push(
            format!("workflow.steps.{}.depends_on", publish.id),
            format!(
                "publish step {} must come after the review gate {}",
                publish.id, review.id
            ),
        );
    }
    for s in steps {
        if s.id != review.id && s.id != publish.id && !dag.is_ancestor(&s.id, &review.id) {
            v.push(
                format!("workflow.steps.{}", s.id),
                format!(
                    "step {} must finish before the review gate {}; add it to the gate's depends_on",
                    s.id, review.id
                ),
            );
        }
    }
}
