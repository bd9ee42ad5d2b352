//! loraflow-core: the domain of loraflow, with no I/O.
//!
//! A LoRA training job is a cqrs-es aggregate ([`job::TrainingJob`]) whose
//! state is only the fold of its events. Its work is a DAG of steps
//! ([`workflow`]) checked against what executors can run, and its parameters
//! are checked against a catalogue of base models and a parameter schema
//! ([`catalogue`]).
//!
//! # Layout
//! - [`job`]: the aggregate: commands, events, errors, state machine, upcasters.
//! - [`workflow`]: `WorkflowSpec`/`StepSpec`, validation, ready sets, the standard template.
//! - [`catalogue`]: base models, parameter schema with overrides and profiles, service status.
//! - [`artifact`]: artifact references (URI + SHA-256) and per-epoch outputs.
//! - [`ids`]: typed identifiers.
//! - [`executor`]: the `Executor` trait, step context, capabilities.
//! - [`schedule`]: the scheduler's state (folded from the feed) and its policy.
//! - [`clock`]: injected time.
//! - [`validation`]: field violations, reported all at once.
//! - [`limits`]: limits on every input (sizes, counts, nesting), one set for every front-end.
//! - [`sampling`]: a job's sample settings, `sample-now` overrides, default prompts.
//! - [`webhook`]: per-job callback URLs, event types and filters, delivery records.

pub mod artifact;
pub mod catalogue;
pub mod clock;
pub mod executor;
pub mod ids;
pub mod job;
pub mod limits;
pub mod sampling;
pub mod schedule;
pub mod validation;
pub mod views;
pub mod webhook;
pub mod workflow;
