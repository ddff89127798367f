//! The welcome page in a real headless browser: Debian's Chromium, driven through
//! chromedriver's WebDriver API (plain HTTP and JSON, spoken with reqwest), on a live grid of
//! `tahoe run` processes. It takes a screenshot, and asserts on the rendered DOM that the
//! page shows the connected server count, a server going down and coming back *without a
//! reload*, and the Tor handler's state on a node that hides its IP address. A second test
//! checks the gateway's protections in the same browser: an HTML page stored on the grid
//! shows the grid's images but runs no script and loads nothing from elsewhere, and another
//! site's page cannot make the node fetch a cap.
//!
//! `scripts/test.sh` installs `chromium` and `chromium-driver`; without them this test
//! fails and says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use folio_tests::ChildGuard;
use reqwest::Client;
use serde_json::{json, Value};

mod common;
use common::procs::ProcGrid;
use common::{add_to_section, create, listen_port, run, wait_for_file};

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed: this test needs Debian's chromium and \
                 chromium-driver (scripts/test.sh installs them: apt-get install chromium \
                 chromium-driver)"
            )
        })
}

/// A chromedriver process and one headless Chromium session in it.
struct Browser {
    http: Client,
    session: String,
    base: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// chromedriver, started in a process group of its own, and every Chromium process it
/// started with it: dropping it kills the whole group (by its id, the driver's PID), so no
/// browser outlives the test, even one that panics.
struct Driver(ChildGuard);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.pid())])
            .status();
    }
}

impl Browser {
    async fn start() -> Browser {
        let chromium = which("chromium");
        let chromedriver = which("chromedriver");
        let port = listen_port();
        let mut cmd = std::process::Command::new(chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = Driver(ChildGuard::spawn("chromedriver", cmd).unwrap());
        let base = format!("http://127.0.0.1:{port}");
        let http = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1400,1200",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session: {r:#}"))
            .to_string();
        Browser {
            http,
            session,
            base,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let mut req = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if r["value"].get("error").is_some() {
            panic!("WebDriver {path}: {r:#}");
        }
        r["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Waits (up to `within`) until `script` returns `want`.
    async fn until(&self, within: Duration, script: &str, want: Value) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.eval(script).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page's `{script}` is {got}, not {want}, after {within:?}; the page:\n{}",
                self.eval("return document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A PNG of the window, saved at `path`.
    async fn screenshot(&self, path: &Path) {
        let b64 = self
            .command(reqwest::Method::GET, "screenshot", Value::Null)
            .await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(png.len() > 10_000, "a {}-byte screenshot", png.len());
        std::fs::write(path, png).unwrap();
    }

    async fn close(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    data_encoding::BASE64.decode(s.as_bytes()).unwrap()
}

const COUNT: &str = "return document.getElementById('connected-servers').textContent";
const MARK: &str = "return window.folioTestMark === 'still here'";

#[test]
fn the_welcome_page_in_a_headless_browser_follows_the_grid_without_a_reload() {
    let mut grid = ProcGrid::start(4, &[]);
    let url = wait_for_file(&grid.client.join("node.url"), Duration::from_secs(30));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let browser = rt.block_on(async {
        let b = Browser::start().await;
        b.open(&url).await;
        b.until(Duration::from_secs(30), COUNT, json!("4")).await;
        assert_eq!(
            b.eval("return document.querySelectorAll('#servers tr.server.up').length")
                .await,
            json!(4)
        );
        b.screenshot(&shots.join("welcome.png")).await;
        // A mark in the page: it survives only if the page is never reloaded.
        b.eval("window.folioTestMark = 'still here'; return true")
            .await;
        b
    });

    // A server goes down: the page shows it within a few refreshes.
    let mut s3 = grid.nodes.pop().unwrap();
    s3.terminate();
    assert!(s3.wait_timeout(Duration::from_secs(30)).success());
    rt.block_on(async {
        browser
            .until(Duration::from_secs(60), COUNT, json!("3"))
            .await;
        assert_eq!(
            browser
                .eval(
                    "const r = document.querySelector('#servers tr.server.down'); \
                     return r && r.cells[0].textContent"
                )
                .await,
            json!("s3")
        );
        assert_eq!(browser.eval(MARK).await, json!(true), "the page reloaded");
        browser
            .screenshot(&shots.join("welcome-server-down.png"))
            .await;
    });

    // And comes back.
    grid.nodes.push(run(&grid.base.join("s3")));
    rt.block_on(async {
        browser
            .until(Duration::from_secs(120), COUNT, json!("4"))
            .await;
        assert_eq!(browser.eval(MARK).await, json!(true), "the page reloaded");
    });

    // A node that hides its IP address: its Tor handler (embedded arti, on a private
    // network file naming a directory cache nobody runs, so it stays bootstrapping) and
    // its state are on its page.
    let hidden = grid.base.join("hidden");
    create(&[
        "create-client",
        "--hide-ip",
        "--webport=tcp:0:interface=127.0.0.1",
        "--nickname=hidden",
        hidden.to_str().unwrap(),
    ]);
    let net = grid.base.join("nowhere.net");
    std::fs::write(
        &net,
        format!(
            "auth0 v3ident={} rsa={} ed={} orport=127.0.0.1:1\n",
            "A".repeat(40),
            "B".repeat(40),
            "A".repeat(43)
        ),
    )
    .unwrap();
    add_to_section(&hidden, "tor", &format!("arti.network = {}", net.display()));
    let mut hidden_proc = run(&hidden);
    let hidden_url = wait_for_file(&hidden.join("node.url"), Duration::from_secs(60));
    rt.block_on(async {
        browser.open(&hidden_url).await;
        browser
            .until(
                Duration::from_secs(30),
                "const r = document.querySelector('#handlers tr[data-hint=\"tor\"]'); \
                 return !!r && r.cells[1].textContent.startsWith('tor (embedded arti, ')",
                json!(true),
            )
            .await;
        let state = browser
            .eval("return document.querySelector('#handlers tr[data-hint=\"tor\"]').cells[1].textContent")
            .await;
        assert!(
            state.as_str().unwrap().contains("%: "),
            "the Tor handler's state: {state}"
        );
        let node = browser.eval("return document.getElementById('node').innerText").await;
        assert!(
            node.as_str().unwrap().contains("Hides its IP address\tyes"),
            "{node}"
        );
        browser.screenshot(&shots.join("welcome-hidden.png")).await;
        browser.close().await;
    });
    hidden_proc.terminate();
    assert!(hidden_proc.wait_timeout(Duration::from_secs(30)).success());
    common::stop_all(&mut grid.nodes, Duration::from_secs(30));
}

/// A 1×1 GIF (43 bytes): the image a page stored on the grid shows.
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// The sizes of the downloads the client's gateway has made, newest first (the welcome
/// page's transfers; they name no caps, so the test tells files apart by size).
async fn downloads(http: &Client, gateway: &str) -> Vec<u64> {
    let v: Value = http
        .get(format!("{gateway}?t=json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "download")
        .filter_map(|t| t["total"].as_u64())
        .collect()
}

/// What a web page can make the gateway do, in a real browser: an HTML file stored on the
/// grid shows the grid's images but runs no script and loads nothing from elsewhere (so it
/// cannot send its cap-bearing URL away), and a page on another site cannot make the node
/// fetch a cap (an `<img>` naming one), while a person's own request still can.
#[test]
fn pages_on_the_grid_are_sandboxed_and_other_sites_cannot_make_the_node_fetch() {
    let mut grid = ProcGrid::start(
        2,
        &["--shares-needed=1", "--shares-happy=2", "--shares-total=2"],
    );
    let gateway = wait_for_file(&grid.client.join("node.url"), Duration::from_secs(30));
    let gateway = gateway.trim().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let put = |body: Vec<u8>| {
            let http = http.clone();
            let url = format!("{gateway}uri");
            async move {
                let r = http.put(url).body(body).send().await.unwrap();
                assert!(r.status().is_success(), "PUT /uri: {}", r.status());
                r.text().await.unwrap().trim().to_string()
            }
        };
        // Another site: it records what it is asked for.
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_port = elsewhere.local_addr().unwrap().port();
        // Files told apart by their sizes: 43 (the image), 50, 61.
        let pic = put(GIF.to_vec()).await;
        let scripted = put(vec![b's'; 50]).await;
        let probed = put(vec![b'p'; 61]).await;
        let page = format!(
            "<!doctype html><html><head><title>a page on the grid</title></head><body>\
             <p>A page stored on the grid, with an image stored beside it.</p>\
             <img id=\"local\" src=\"/uri/{pic}\">\
             <img id=\"beacon\" src=\"http://127.0.0.1:{elsewhere_port}/beacon.gif\" \
              referrerpolicy=\"unsafe-url\">\
             <script>new Image().src = \"/uri/{scripted}\";</script></body></html>"
        );
        let page_cap = put(page.into_bytes()).await;
        let probe = format!(
            "<!doctype html><title>another site</title>\
             <img src=\"{gateway}uri/{probed}\" onload=\"fetch('/done')\" \
              onerror=\"fetch('/done')\">"
        );
        let record = asked.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let record = record.clone();
            let probe = probe.clone();
            async move {
                record.lock().unwrap().push(uri.path().to_string());
                (
                    [(axum::http::header::CONTENT_TYPE, "text/html")],
                    if uri.path() == "/probe.html" {
                        probe
                    } else {
                        String::new()
                    },
                )
            }
        });
        let server = tokio::spawn(async move { axum::serve(elsewhere, app).await });
        let before = downloads(&http, &gateway).await;

        let b = Browser::start().await;
        // The page on the grid: its image (same gateway) loads; its script does not run,
        // and nothing is loaded from elsewhere.
        b.open(&format!("{gateway}uri/{page_cap}?filename=page.html"))
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !downloads(&http, &gateway).await.contains(&43) {
            assert!(
                Instant::now() < deadline,
                "the page's image was not fetched through the gateway: {:?}",
                downloads(&http, &gateway).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grid-page.png"))
            .await;
        // (WebDriver's scripts run in the page even though its own may not.)
        assert_eq!(
            b.eval(
                "return [document.getElementById('local').naturalWidth, \
                 document.getElementById('beacon').naturalWidth]"
            )
            .await,
            json!([1, 0]),
            "the grid's image shows, the one from elsewhere does not"
        );
        let now = downloads(&http, &gateway).await;
        assert!(!now.contains(&50), "the page's script ran: {now:?}");
        assert!(
            asked.lock().unwrap().is_empty(),
            "the page loaded from elsewhere: {:?}",
            asked.lock().unwrap()
        );

        // Another site's page names a cap in an <img>: the node fetches nothing.
        b.open(&format!("http://127.0.0.1:{elsewhere_port}/probe.html"))
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !asked.lock().unwrap().iter().any(|p| p == "/done") {
            assert!(
                Instant::now() < deadline,
                "the other site's probe image never finished: {:?}",
                asked.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = downloads(&http, &gateway).await;
        assert!(
            !now.contains(&61),
            "another site made the node fetch: {now:?}"
        );
        b.close().await;
        // The same cap asked for by a person's own client is fetched (so the size test
        // above can see a fetch).
        let r = http
            .get(format!("{gateway}uri/{probed}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 61);
        assert!(downloads(&http, &gateway).await.contains(&61));
        assert!(!before.contains(&43) && !before.contains(&61), "{before:?}");
        server.abort();
    });
    common::stop_all(&mut grid.nodes, Duration::from_secs(30));
}
