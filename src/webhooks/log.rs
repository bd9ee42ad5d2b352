//! Reading the delivery log: a job's deliveries, each with its attempts,
//! a page at a time.

use loraflow_core::ids::{JobId, TenantId};
use loraflow_core::validation::Violations;
use loraflow_core::webhook::{Delivery, DeliveryAttempt};
use loraflow_store::webhooks::DeliveryCursor;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Page size when the caller gives 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: usize = 500;

/// One event to one URL, with every attempt made for it, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    pub delivery: Delivery,
    pub attempts: Vec<DeliveryAttempt>,
}

/// A page of a job's delivery log, by event sequence, then URL.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPage {
    pub deliveries: Vec<WebhookDelivery>,
    /// Pass it back for the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

fn encode(c: &DeliveryCursor) -> String {
    hex::encode(format!("{}:{}", c.sequence, c.url))
}

fn decode(token: &str) -> Result<DeliveryCursor> {
    let bad = || {
        let mut v = Violations::default();
        v.push(
            "page_token",
            format!("page token {token:?} is not one this list returned; start again without it"),
        );
        Error::InvalidArgument(v)
    };
    let text = hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (seq, url) = text.split_once(':').ok_or_else(bad)?;
    Ok(DeliveryCursor {
        sequence: seq.parse().map_err(|_| bad())?,
        url: url.to_owned(),
    })
}

impl Engine {
    /// The delivery log of a job the tenant owns: its webhook deliveries by
    /// event sequence, then URL, each with its attempts. `page_size` 0 is
    /// 50, above 500 is 500.
    pub async fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        job: &JobId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<DeliveryPage> {
        self.owned(tenant, job).await?;
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = page_token
            .filter(|t| !t.is_empty())
            .map(decode)
            .transpose()?;
        let outbox = self.store().webhooks();
        // One more than asked, to know whether a next page exists.
        let mut page = outbox.deliveries(job, after.as_ref(), size + 1).await?;
        let next_page_token = if page.len() > size {
            page.truncate(size);
            page.last().map(|d| encode(&DeliveryCursor::of(d)))
        } else {
            None
        };
        let attempts = match (page.first(), page.last()) {
            (Some(first), Some(last)) => {
                outbox.attempts(job, first.sequence..=last.sequence).await?
            }
            _ => Vec::new(),
        };
        let deliveries = page
            .into_iter()
            .map(|delivery| {
                let attempts = attempts
                    .iter()
                    .filter(|a| a.sequence == delivery.sequence && a.url == delivery.url)
                    .cloned()
                    .collect();
                WebhookDelivery { delivery, attempts }
            })
            .collect();
        Ok(DeliveryPage {
            deliveries,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_bad_ones_name_the_field() {
        let c = DeliveryCursor {
            sequence: 42,
            url: "https://a.example/h?x=1:2".into(),
        };
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        for bad in ["zz", "00", &hex::encode("x:https://a")] {
            let Err(Error::InvalidArgument(v)) = decode(bad) else {
                panic!("{bad} was accepted")
            };
            assert_eq!(v.0[0].field, "page_token");
        }
    }
}
