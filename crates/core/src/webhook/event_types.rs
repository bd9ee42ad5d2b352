//! Webhook event types: one per job event, named `area:what`.
//!
//! | job event | webhook event type |
//! |---|---|
//! | `JobCreated` | `workflow:created` |
//! | `JobSubmitted` | `workflow:started` (dataset admitted, workflow planned) |
//! | `StepQueued` | `step:queued` |
//! | `StepLeased` | `step:leased` |
//! | `StepProgressed` | `step:progress` |
//! | `StepCompleted` | `step:completed` |
//! | `StepFailed` | `step:failed` |
//! | `LeaseExpired` | `step:expired` |
//! | `StepRetried` | `step:retried` |
//! | `ReviewRequested` | `workflow:in_review` |
//! | `JobApproved` | `workflow:approved` |
//! | `JobPublished` | `workflow:completed` |
//! | `JobFailed`, `JobRejected`, `JobCancelled` | `workflow:failed` |
//!
//! Rejection and cancellation end a job in the `Failed` state like any other
//! failure, so they share `workflow:failed`; the body's `event` field names
//! the job event and its payload gives the reason.

use crate::job::JobEvent;

/// Every webhook event type, workflow events first.
pub const EVENT_TYPES: [&str; 13] = [
    "workflow:created",
    "workflow:started",
    "workflow:in_review",
    "workflow:approved",
    "workflow:completed",
    "workflow:failed",
    "step:queued",
    "step:leased",
    "step:progress",
    "step:completed",
    "step:failed",
    "step:expired",
    "step:retried",
];

/// Filters that match several event types.
pub const WILDCARDS: [&str; 3] = ["workflow:*", "step:*", "*"];

/// The webhook event type of a job event. The match is exhaustive, so a new
/// job event cannot be added without naming its webhook event type.
pub fn event_type(event: &JobEvent) -> &'static str {
    match event {
        JobEvent::JobCreated(_) => "workflow:created",
        JobEvent::JobSubmitted(_) => "workflow:started",
        JobEvent::StepQueued(_) => "step:queued",
        JobEvent::StepLeased(_) => "step:leased",
        JobEvent::StepProgressed(_) => "step:progress",
        JobEvent::StepCompleted(_) => "step:completed",
        JobEvent::StepFailed(_) => "step:failed",
        JobEvent::LeaseExpired(_) => "step:expired",
        JobEvent::StepRetried(_) => "step:retried",
        JobEvent::ReviewRequested(_) => "workflow:in_review",
        JobEvent::JobApproved(_) => "workflow:approved",
        JobEvent::JobPublished(_) => "workflow:completed",
        JobEvent::JobFailed(_) | JobEvent::JobRejected(_) | JobEvent::JobCancelled(_) => {
            "workflow:failed"
        }
    }
}

/// Whether `filter` is an event type or a wildcard.
pub fn is_filter(filter: &str) -> bool {
    EVENT_TYPES.contains(&filter) || WILDCARDS.contains(&filter)
}

/// Whether `filter` selects events of `event_type`: the same name, `*`, or
/// `area:*` for any event type of that area.
pub fn filter_matches(filter: &str, event_type: &str) -> bool {
    filter == "*"
        || filter == event_type
        || filter
            .strip_suffix('*')
            .is_some_and(|area| area.ends_with(':') && event_type.starts_with(area))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::canned::Driver;

    #[test]
    fn every_event_type_is_a_filter_and_matches_itself_and_its_area() {
        for t in EVENT_TYPES {
            assert!(is_filter(t));
            assert!(filter_matches(t, t));
            assert!(filter_matches("*", t));
            let area = t.split(':').next().unwrap();
            assert!(filter_matches(&format!("{area}:*"), t), "{t}");
            let other = if area == "step" {
                "workflow:*"
            } else {
                "step:*"
            };
            assert!(!filter_matches(other, t), "{other} must not match {t}");
        }
    }

    #[test]
    fn unknown_filters_are_refused() {
        for f in [
            "",
            "step",
            "step:",
            "step:done",
            "workflow:**",
            "job:*",
            "STEP:*",
            "**",
        ] {
            assert!(!is_filter(f), "{f:?}");
        }
        assert!(!filter_matches("step:queued", "step:leased"));
        assert!(!filter_matches("step", "step:leased"));
    }

    #[test]
    fn a_whole_job_maps_to_known_event_types() {
        let mut d = Driver::new();
        d.run_to_review();
        d.approve(1);
        let types: Vec<_> = d.events.iter().map(event_type).collect();
        assert!(types.iter().all(|t| EVENT_TYPES.contains(t)));
        assert_eq!(types.first(), Some(&"workflow:created"));
        assert_eq!(types.get(1), Some(&"workflow:started"));
        assert!(types.contains(&"workflow:in_review"));
        assert!(types.contains(&"step:completed"));
        // Approval queues the publish step.
        assert_eq!(
            types[types.len() - 2..],
            ["workflow:approved", "step:queued"]
        );
    }
}
