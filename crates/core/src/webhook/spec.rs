//! [`WebhookSpec`]: a callback URL of a job and the event types it wants,
//! checked when the job is created.

use serde::{Deserialize, Serialize};

use super::event_types::{EVENT_TYPES, WILDCARDS, filter_matches, is_filter};
use crate::validation::Violations;

/// Most webhooks one job may have, by default (see
/// [`Limits::webhooks`](crate::limits::Limits::webhooks), which checks it).
pub const MAX_WEBHOOKS: usize = 8;
/// Longest accepted webhook URL, by default (see
/// [`Limits::webhook_url_chars`](crate::limits::Limits::webhook_url_chars)).
pub const MAX_URL_CHARS: usize = 2048;

/// A callback URL and the events it receives, given when the job is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://`, with a host and no user name or password (the
    /// URL is stored in the job's history; the signature authenticates the
    /// sender instead).
    pub url: String,
    /// Event types ([`EVENT_TYPES`]) or wildcards ([`WILDCARDS`]); at least one.
    pub events: Vec<String>,
}

impl WebhookSpec {
    pub fn new(
        url: impl Into<String>,
        events: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            url: url.into(),
            events: events.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether events of `event_type` go to this URL.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|f| filter_matches(f, event_type))
    }
}

fn check_url(raw: &str) -> Result<(), String> {
    let q = crate::limits::quote(raw);
    let url = url::Url::parse(raw).map_err(|e| {
        format!("url {q} is not a valid URL ({e}); give e.g. https://example.com/hooks/loraflow")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url {q} has scheme {:?}; webhooks are sent over http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("url {q} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "url {q} carries a user name or password; remove them (requests are signed with the tenant's webhook secret instead)"
        ));
    }
    Ok(())
}

/// Check a job's webhooks; violations are named `webhooks[i].url` and
/// `webhooks[i].events[j]`.
pub(crate) fn validate(webhooks: &[WebhookSpec], v: &mut Violations) {
    for (i, w) in webhooks.iter().enumerate() {
        if let Err(e) = check_url(&w.url) {
            v.push(format!("webhooks[{i}].url"), e);
        } else if let Some(first) = webhooks[..i].iter().position(|o| o.url == w.url) {
            v.push(
                format!("webhooks[{i}].url"),
                format!(
                    "url {:?} is already given by webhooks[{first}]; list all its events there",
                    w.url
                ),
            );
        }
        if w.events.is_empty() {
            v.push(
                format!("webhooks[{i}].events"),
                format!(
                    "no events given; list event types ({}) or wildcards ({})",
                    EVENT_TYPES.join(", "),
                    WILDCARDS.join(", ")
                ),
            );
        }
        for (j, f) in w.events.iter().enumerate() {
            if !is_filter(f) {
                v.push(
                    format!("webhooks[{i}].events[{j}]"),
                    format!(
                        "unknown event filter {f:?}; use one of {}, or a wildcard ({})",
                        EVENT_TYPES.join(", "),
                        WILDCARDS.join(", ")
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(webhooks: &[WebhookSpec]) -> Vec<String> {
        let mut v = Violations::default();
        validate(webhooks, &mut v);
        v.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn good_webhooks_pass() {
        let hooks = [
            WebhookSpec::new("https://example.com/hooks", ["workflow:*"]),
            WebhookSpec::new("http://127.0.0.1:8080/x?y=1", ["step:*", "workflow:failed"]),
        ];
        assert!(fields(&hooks).is_empty());
        assert!(hooks[1].wants("step:progress"));
        assert!(hooks[1].wants("workflow:failed"));
        assert!(!hooks[1].wants("workflow:completed"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let hooks = [
            WebhookSpec::new("ftp://example.com/x", ["workflow:started"]),
            WebhookSpec::new("not a url", ["step:*"]),
            WebhookSpec::new("https://user:pw@example.com/", ["*"]),
            WebhookSpec::new("https://example.com/a", Vec::<String>::new()),
            WebhookSpec::new("https://example.com/a", ["step:*", "step:done"]),
        ];
        assert_eq!(
            fields(&hooks),
            [
                "webhooks[0].url",
                "webhooks[1].url",
                "webhooks[2].url",
                "webhooks[3].events",
                "webhooks[4].url",
                "webhooks[4].events[1]",
            ]
        );
        let mut v = Violations::default();
        validate(&hooks, &mut v);
        assert!(v.0[0].description.contains("\"ftp\""), "{v}");
        assert!(v.0[5].description.contains("step:done"), "{v}");
    }
}
