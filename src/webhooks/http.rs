//! The HTTP side of a delivery: one POST with a deadline, answered by a
//! status (and the start of the body, for the log) or an error message.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The most of a response body kept for the delivery log.
const BODY_START: usize = 200;
/// The most of a response body read (so a connection can be reused).
const BODY_READ: usize = 64 * 1024;

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    /// Up to 200 characters of the body, for error messages.
    pub body_start: String,
}

/// A pooled HTTP/1.1 client for `http` and `https` URLs (rustls with
/// Mozilla's roots). Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// An error with its causes, as one line (`client error (Connect): tcp
/// connect error: Connection refused (os error 111)`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

impl HttpClient {
    pub(crate) fn new() -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("ring supports rustls' default protocol versions")
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: Client::builder(TokioExecutor::new())
                // Receivers behind load balancers drop idle connections.
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    /// POST `body` as JSON to `url` with `headers`; the whole exchange
    /// (connecting, sending, reading up to 64 KiB of the answer) must end
    /// within `timeout`.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, String> {
        // The spec kept the URL as given; send it in its normalised form
        // (percent-encoded), which `http::Uri` accepts.
        let url = url::Url::parse(url).map_err(|e| format!("invalid url {url:?}: {e}"))?;
        let mut req = http::Request::post(url.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("loraflow-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| format!("cannot build a request to {url}: {e}"))?;
        req.headers_mut().extend(headers);
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| chain(&e))?;
            let status = resp.status().as_u16();
            // The body only feeds the log; a receiver that answers and then
            // breaks the body still answered.
            let body = Limited::new(resp.into_body(), BODY_READ)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body_start: String = String::from_utf8_lossy(&body)
                .chars()
                .take(BODY_START)
                .collect();
            Ok(Answer { status, body_start })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }
}
