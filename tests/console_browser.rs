//! The web console in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`; `.ci/run` installs
//! them). A reviewer opens the console, pastes a token, finds a running
//! job, sees its progress advance without reloading, opens the contact
//! sheet, approves an epoch by clicking and sees it published; another
//! tenant's token sees none of it. Screenshots of the main pages are kept
//! under `target/console-screenshots/`.
//!
//! Without chromedriver the test is skipped with a notice, except under
//! `CI=true`, where it fails.

use crate::common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{HttpServer, client};
use common::server::{Backend, ServerSetup, TestServer};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use loraflow::core::catalogue::ParamValue;
use serde_json::{Value, json};

/// The chromedriver to run: `$CHROMEDRIVER`, else the first on `PATH`.
fn chromedriver() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMEDRIVER") {
        return Some(p.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file())
}

/// A chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> Option<(Driver, Client)> {
    let Some(path) = chromedriver() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "chromedriver is not installed, and CI=true requires the browser tests to run (apt-get install chromium chromium-driver)"
            );
        }
        eprintln!("notice: chromedriver is not on PATH; skipping the browser test");
        return None;
    };
    let port = free_port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut options = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1100", "--disable-extensions",
    ]});
    if let Some(bin) = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()))
    {
        options["binary"] = json!(bin);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => return Some((driver, c)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("chromedriver at {} did not start a session", driver.url)
}

/// Where screenshots go: `target/console-screenshots/`.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Wait until `css` matches an element whose text satisfies `pred`; its text.
async fn wait_text(c: &Client, css: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..600 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if pred(&t) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shot(c, "timed-out").await;
    panic!("{css} never matched; last text {last:?}")
}

async fn click(c: &Client, css: &str) {
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && e.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shot(c, "timed-out").await;
    panic!("cannot click {css}")
}

async fn use_token(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    let field = c.wait().for_element(Locator::Css("#token")).await.unwrap();
    wait_text(c, "#who", |t| t.contains("Enter your tenant token")).await;
    field.send_keys(token).await.unwrap();
    click(c, "#token-save").await;
}

/// A job with four slow epochs, created over the HTTP API.
async fn demo_job(h: &HttpServer, uri: &str) -> String {
    let mut s = spec(uri);
    s.params.insert("epochs".into(), ParamValue::Int(4));
    let mut job = serde_json::to_value(s).unwrap();
    job.as_object_mut().unwrap().remove("tenant");
    let resp = client()
        .post(h.url("/v1/jobs"))
        .bearer_auth("t-acme")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"job": job})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    body["status"]["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_approves_an_epoch_in_the_console() {
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let setup = ServerSetup {
        executors: true,
        trainer: FileTrainer {
            epoch_time: Duration::from_millis(1500),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = TestServer::start(Backend::Sqlite, setup).await.unwrap();
    let h = HttpServer::start(&s).await;
    let base = h.base.clone();

    // Open the console, paste the token.
    use_token(&c, &base, "t-acme").await;
    wait_text(&c, "#who", |t| t == "tenant acme").await;
    let id = demo_job(&h, &s.dataset_uri).await;
    // The list refreshes by itself and shows the job.
    let row = format!("#jobs tr[data-job=\"{id}\"]");
    wait_text(&c, &row, |t| t.contains("corgi")).await;
    shot(&c, "jobs").await;

    // The job page follows the job live: progress rises without a reload.
    click(&c, &format!("{row} a")).await;
    wait_text(&c, "h1", |t| t.contains("corgi")).await;
    c.execute("window.loraflowNoReload = true; return 1;", vec![])
        .await
        .unwrap();
    let percent = |t: &str| -> Option<u32> {
        let at = t.find("train ")?;
        t[at + 6..].split('%').next()?.trim().parse().ok()
    };
    let first = wait_text(&c, "#progress", |t| percent(t).is_some_and(|p| p < 100)).await;
    let first = percent(&first).unwrap();
    wait_text(&c, "#progress", |t| percent(t).is_some_and(|p| p > first)).await;
    shot(&c, "job-running").await;
    wait_text(&c, "h1 .state", |t| t == "InReview").await;
    let same_page = c
        .execute("return window.loraflowNoReload === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, json!(true), "the page was never reloaded");

    // The contact sheet: every epoch's samples side by side.
    click(&c, "#open-sheet").await;
    wait_text(&c, "#sheet", |t| t.contains("Epoch 4")).await;
    for _ in 0..100 {
        let loaded = c
            .execute(
                "return [...document.querySelectorAll('#sheet img')].filter(i => i.src.startsWith('blob:') && i.naturalWidth > 0).length;",
                vec![],
            )
            .await
            .unwrap();
        if loaded.as_u64() >= Some(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shot(&c, "contact-sheet").await;
    let page = c
        .find(Locator::Css("#main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("null") && !page.contains("undefined"),
        "no absent value is shown as text: {page}"
    );

    // Approve epoch 3 by clicking, confirm, and see it published.
    click(&c, "button.choose[data-epoch=\"3\"]").await;
    wait_text(&c, ".epoch.chosen h3", |t| t == "Epoch 3").await;
    click(&c, "#approve").await;
    wait_text(&c, "#confirm-bar", |t| t.contains("Approve epoch 3")).await;
    click(&c, "#confirm").await;
    wait_text(&c, "h1 .state", |t| t == "Published").await;
    let published = wait_text(&c, "#published", |t| !t.is_empty()).await;
    assert!(published.contains("Published epoch 3"), "{published}");
    shot(&c, "job-published").await;

    // The history verifies; the fleet and queue pages answer.
    c.goto(&format!("{base}/jobs/{id}/history")).await.unwrap();
    wait_text(&c, "#verification", |t| t.starts_with("Log verified")).await;
    wait_text(&c, "#events", |t| t.contains("JobPublished")).await;
    shot(&c, "history").await;
    c.goto(&format!("{base}/fleet")).await.unwrap();
    wait_text(&c, "#fleet", |t| !t.is_empty()).await;
    shot(&c, "fleet").await;
    c.goto(&format!("{base}/queue")).await.unwrap();
    wait_text(&c, "#queue", |t| t.contains("Nothing queued")).await;
    shot(&c, "queue").await;

    // Another tenant sees none of it.
    click(&c, "#forget").await;
    use_token(&c, &base, "t-globex").await;
    wait_text(&c, "#who", |t| t == "tenant globex").await;
    wait_text(&c, "#jobs", |t| t.contains("No jobs.")).await;
    c.goto(&format!("{base}/jobs/{id}")).await.unwrap();
    let err = wait_text(&c, "#error", |t| !t.is_empty()).await;
    assert!(err.starts_with("NOT_FOUND"), "{err}");
    assert!(!err.contains("acme"), "{err}");
    shot(&c, "other-tenant").await;

    // The token never left the tab's storage for a URL.
    let url = c.current_url().await.unwrap();
    assert!(!url.as_str().contains("t-globex") && !url.as_str().contains("t-acme"));

    c.close().await.unwrap();
    h.stop().await;
    s.stop().await;
}
