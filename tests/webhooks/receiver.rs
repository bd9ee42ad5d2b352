//! A webhook receiver for the tests: a hyper server on a loopback port that
//! answers scripted statuses, records every request, and can be taken down
//! (listener closed, connections cut) and brought back on the same port.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use loraflow::webhooks::{
    ATTEMPT_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One request as the receiver saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub event_id: String,
    pub event_type: String,
    pub timestamp: String,
    pub signature: String,
    pub attempt: u32,
    pub body: Bytes,
    pub status: u16,
}

#[derive(Default)]
pub struct RecvState {
    /// Statuses for the next requests, in order; then `default`.
    pub script: VecDeque<u16>,
    pub default: u16,
    pub requests: Vec<Received>,
}

impl RecvState {
    /// Acknowledged (2xx) event ids at `path`, in arrival order.
    pub fn acked(&self, path: &str) -> Vec<String> {
        self.requests
            .iter()
            .filter(|r| r.path == path && (200..300).contains(&r.status))
            .map(|r| r.event_id.clone())
            .collect()
    }
}

/// An HTTP receiver that can be taken down (listener closed, connections
/// cut) and brought back on the same port.
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<RecvState>>,
    seen: watch::Sender<usize>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Receiver {
    pub async fn start(script: &[u16]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(RecvState {
                script: script.iter().copied().collect(),
                default: 200,
                requests: Vec::new(),
            })),
            seen: watch::Sender::new(0),
            running: None,
        };
        r.serve(listener);
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let (state, seen, token) = (self.state.clone(), self.seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (state, seen) = (state.clone(), seen.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(state.clone(), seen.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            // Down: the listener is dropped and open connections are cut.
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        self.running = Some((stop, task));
    }

    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            task.await.unwrap();
        }
    }

    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn set_default(&self, status: u16) {
        self.state.lock().unwrap().default = status;
    }

    /// Wait until `cond` holds of what the receiver saw.
    pub async fn wait(&self, what: &str, cond: impl Fn(&RecvState) -> bool) {
        let mut seen = self.seen.subscribe();
        let ok = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                seen.borrow_and_update();
                if cond(&self.state.lock().unwrap()) {
                    return;
                }
                seen.changed().await.unwrap();
            }
        })
        .await;
        if ok.is_err() {
            let s = self.state.lock().unwrap();
            let seen: Vec<_> = s
                .requests
                .iter()
                .map(|r| format!("{} {} {}", r.path, r.event_id, r.status))
                .collect();
            panic!("timed out waiting for {what}; requests: {seen:?}");
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }
}

async fn handle(
    state: Arc<Mutex<RecvState>>,
    seen: watch::Sender<usize>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let h = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let status = {
        let mut s = state.lock().unwrap();
        let status = s.script.pop_front().unwrap_or(s.default);
        s.requests.push(Received {
            path: parts.uri.path().to_owned(),
            event_id: h(EVENT_ID_HEADER),
            event_type: h(EVENT_TYPE_HEADER),
            timestamp: h(TIMESTAMP_HEADER),
            signature: h(SIGNATURE_HEADER),
            attempt: h(ATTEMPT_HEADER).parse().unwrap_or(0),
            body,
            status,
        });
        status
    };
    seen.send_modify(|n| *n += 1);
    let text = if status < 300 { "" } else { "try again later" };
    Ok(hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}
