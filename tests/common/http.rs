//! The HTTP server (API, console, metrics) of a [`TestServer`]'s engine on
//! its own loopback port, with the same tokens, and a plain HTTP client.

use std::time::Duration;

use loraflow::grpc::auth::Auth;
use loraflow::http::HttpOptions;
use tokio_util::sync::CancellationToken;

use super::server::{TestServer, auth_config};

/// The body limit of test HTTP servers.
pub const MAX_BODY: usize = 64 * 1024;
/// The dataset upload limit of test HTTP servers.
pub const MAX_UPLOAD: usize = 512 * 1024;

pub struct HttpServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serve `server`'s engine over HTTP until [`stop`](Self::stop).
    pub async fn start(server: &TestServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let options = HttpOptions {
            auth: Auth::from_config(&auth_config()),
            max_body_bytes: MAX_BODY,
            max_upload_bytes: MAX_UPLOAD,
            uploads: loraflow::transfer::TransferLimits {
                max_dataset_files: 8,
                max_file_bytes: 256 * 1024,
                ..Default::default()
            },
        };
        let task = tokio::spawn({
            let (engine, stop) = (server.engine.clone(), shutdown.clone());
            async move {
                loraflow::http::serve(engine, options, listener, stop)
                    .await
                    .unwrap()
            }
        });
        Self {
            base,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A client that never follows redirects or keeps cookies.
pub fn client() -> reqwest::Client {
    // reqwest runs on the process's rustls provider (ring, as loraflow's own clients).
    loraflow::tls::use_ring();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
