//! The validated workflow as a petgraph DAG: topological order and ready sets.

use std::collections::{BTreeMap, HashMap};

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use super::spec::{StepSpec, WorkflowSpec};
use crate::ids::StepId;

/// A workflow known to be acyclic with resolvable dependencies. Built only by
/// [`WorkflowSpec::validate`](super::WorkflowSpec::validate).
#[derive(Debug, Clone)]
pub struct Dag {
    spec: WorkflowSpec,
    graph: DiGraph<usize, ()>,
    nodes: HashMap<StepId, NodeIndex>,
    topo: Vec<usize>,
}

/// Where a step is in its life, as far as readiness is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not yet started (not queued, not running).
    Waiting,
    /// Queued, leased or awaiting review.
    Started,
    Done,
}

impl Dag {
    /// Build the graph; `None` if there is a cycle or an unknown dependency.
    pub(crate) fn build(spec: &WorkflowSpec) -> Option<Self> {
        let mut graph = DiGraph::new();
        let mut nodes = HashMap::new();
        for (i, step) in spec.steps.iter().enumerate() {
            nodes.insert(step.id.clone(), graph.add_node(i));
        }
        for step in &spec.steps {
            let to = nodes[&step.id];
            for dep in &step.depends_on {
                graph.add_edge(*nodes.get(dep)?, to, ());
            }
        }
        let topo = toposort(&graph, None)
            .ok()?
            .into_iter()
            .map(|n| graph[n])
            .collect();
        Some(Self {
            spec: spec.clone(),
            graph,
            nodes,
            topo,
        })
    }

    pub fn spec(&self) -> &WorkflowSpec {
        &self.spec
    }

    pub fn step(&self, id: &StepId) -> Option<&StepSpec> {
        self.nodes.get(id).map(|n| &self.spec.steps[self.graph[*n]])
    }

    /// Steps in an order where every step comes after its dependencies.
    pub fn topological(&self) -> impl Iterator<Item = &StepSpec> {
        self.topo.iter().map(|i| &self.spec.steps[*i])
    }

    /// Steps that are waiting and whose dependencies are all done, in
    /// topological order.
    pub fn ready<'a>(&'a self, progress: &BTreeMap<StepId, Progress>) -> Vec<&'a StepSpec> {
        let state = |id: &StepId| progress.get(id).copied().unwrap_or(Progress::Waiting);
        self.topological()
            .filter(|s| state(&s.id) == Progress::Waiting)
            .filter(|s| s.depends_on.iter().all(|d| state(d) == Progress::Done))
            .collect()
    }

    /// True if `ancestor` must finish before `step` can start.
    pub fn is_ancestor(&self, ancestor: &StepId, step: &StepId) -> bool {
        let (Some(a), Some(s)) = (self.nodes.get(ancestor), self.nodes.get(step)) else {
            return false;
        };
        if a == s {
            return false;
        }
        let reversed = Reversed(&self.graph);
        let mut dfs = Dfs::new(reversed, *s);
        while let Some(n) = dfs.next(reversed) {
            if n == *a {
                return true;
            }
        }
        false
    }
}
