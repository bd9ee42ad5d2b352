//! Scheduling, as a pure core: [`SchedulerState`] is folded from the global
//! event feed, and its methods decide which step an executor gets
//! ([`SchedulerState::pick`]) and what is overdue ([`SchedulerState::due`]).
//! The runtime in the root crate turns decisions into commands.
//! [`unservable`] says what a queued step waits for when no connected
//! executor could ever run it.

mod policy;
mod state;
pub mod unservable;

pub use policy::Action;
pub use state::{LiveLease, QueuedStep, SchedulerState};
pub use unservable::{Need, Unservable, unservable, unservable_job};

#[cfg(test)]
mod tests;
