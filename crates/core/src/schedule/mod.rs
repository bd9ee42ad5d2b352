//! Scheduling, as a pure core: [`SchedulerState`] is folded from the global
//! event feed, and its methods decide which step an executor gets
//! ([`SchedulerState::pick`]) and what is overdue ([`SchedulerState::due`]).
//! The runtime in the root crate turns decisions into commands.

mod policy;
mod state;

pub use policy::Action;
pub use state::{LiveLease, QueuedStep, SchedulerState};

#[cfg(test)]
mod tests;
