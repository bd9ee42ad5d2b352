//! Workflows: a DAG of steps ([`WorkflowSpec`]), its validation, ready-set
//! computation ([`Dag`]), and the standard LoRA template.

mod graph;
mod spec;
mod template;
mod validate;

pub use graph::{Dag, Progress};
pub use spec::{Requirements, RetryPolicy, StepKind, StepSpec, Timeouts, WorkflowSpec};
pub use template::{TemplateOptions, standard_lora, standard_lora_with};
pub use validate::KnownKinds;

#[cfg(test)]
mod tests;
