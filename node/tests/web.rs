//! The web gateway over real HTTP: a grid of `tahoe run` processes (an introducer and five
//! storage nodes, 2-of-5), and a real HTTP client (reqwest) against node 0's `web.port`:
//! the welcome page and its JSON, `PUT /uri` and `GET /uri/$CAP` round trips (immutable,
//! literal and mutable files), ranges, directories by path, error codes, and the security
//! rules (Host, Origin, headers).

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;

mod common;
use common::procs::ProcGrid;
use common::{run, wait_for_file};

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed)
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn base_url(node: &Path) -> String {
    wait_for_file(&node.join("node.url"), Duration::from_secs(30))
}

/// `s` percent-encoded as a path segment (caps have `:`, which may stay).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Api {
    http: Client,
    base: String,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        let r = self.get(path).await;
        (r.status(), r.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.text(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        let r = self
            .http
            .put(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap().trim().to_string())
    }

    async fn post(&self, path: &str) -> (StatusCode, String) {
        let r = self.http.post(self.url(path)).send().await.unwrap();
        (r.status(), r.text().await.unwrap().trim().to_string())
    }

    async fn delete(&self, path: &str) -> (StatusCode, String) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        (r.status(), r.text().await.unwrap().trim().to_string())
    }

    /// Waits (up to `within`) until the welcome JSON satisfies `ok`; returns it.
    async fn welcome_until(&self, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.json("/?t=json").await;
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the welcome JSON did not change as expected within {within:?}:\n{v:#}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[test]
fn the_web_api_stores_reads_and_lists_and_refuses_what_it_must() {
    let mut grid = ProcGrid::start(
        5,
        &["--shares-needed=2", "--shares-happy=3", "--shares-total=5"],
    );
    let base = base_url(&grid.client);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let api = Api {
        http: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        base,
    };
    let dir_cap = rt().block_on(async {
        // The welcome page and its JSON.
        let r = api.get("/").await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers().clone();
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        let page = r.text().await.unwrap();
        assert!(page.contains("<b id=\"connected-servers\">5</b>"), "{page}");
        assert!(page.contains("data-hint=\"tcp\""), "{page}");
        assert!(page.contains("/static/welcome.js"));
        let (s, js) = api.text("/static/welcome.js").await;
        assert_eq!(s, StatusCode::OK);
        assert!(js.contains("DOMParser"));

        let v = api
            .welcome_until(Duration::from_secs(30), |v| {
                v["servers"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|s| s["available_space"].is_u64()))
            })
            .await;
        assert_eq!(v["connected_servers"], 5, "{v:#}");
        assert_eq!(v["known_servers"], 5);
        assert_eq!(v["node"]["kind"], "node");
        assert_eq!(v["node"]["nickname"], "s0");
        assert!(v["node"]["tubid"].as_str().unwrap().len() >= 32);
        assert_eq!(v["introducers"]["connected"], 1);
        assert_eq!(v["introducers"]["statuses"].as_array().unwrap().len(), 1);
        let servers = v["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 5);
        for s in servers {
            for k in [
                "nodeid",
                "nickname",
                "connection_status",
                "available_space",
                "version",
                "last_received_data",
                "handler",
                "winning_hint",
                "since",
                "next_attempt",
            ] {
                assert!(s.get(k).is_some(), "server without {k}: {s:#}");
            }
            assert_eq!(s["connected"], true);
            assert!(s["connection_status"]
                .as_str()
                .unwrap()
                .starts_with("connected"));
        }
        assert!(v["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["hint"] == "tcp"));
        assert_eq!(api.json("/status/?t=json").await["known_servers"], 5);

        // An immutable file: PUT, GET, ranges, JSON.
        let big = data(1, 300_000);
        let (s, cap) = api.put("/uri", big.clone()).await;
        assert_eq!(s, StatusCode::OK, "{cap}");
        assert!(cap.starts_with("folio:CHK:"), "{cap}");
        let r = api.get(&format!("/uri/{}", seg(&cap))).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "300000");
        assert_eq!(r.headers()["accept-ranges"], "bytes");
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        let policy = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            policy.starts_with("sandbox")
                && policy.contains("default-src 'none'")
                && !policy.contains("allow-scripts"),
            "{policy}"
        );
        assert_eq!(r.headers()["cross-origin-resource-policy"], "same-origin");
        assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
        for (range, first, last) in [
            ("bytes=1000-1999", 1000usize, 1999usize),
            ("bytes=-10", 299_990, 299_999),
            ("bytes=299000-", 299_000, 299_999),
            ("bytes=0-0", 0, 0),
        ] {
            let r = api
                .http
                .get(api.url(&format!("/uri/{}", seg(&cap))))
                .header("range", range)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {first}-{last}/300000").as_str()
            );
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                &big[first..=last],
                "{range}"
            );
        }
        // Several ranges: the whole file (no multipart answers).
        let r = api
            .http
            .get(api.url(&format!("/uri/{}", seg(&cap))))
            .header("range", "bytes=0-1,5-6")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().len(), 300_000);
        // HEAD: the headers a GET would have, nothing fetched.
        let before = api.json("/?t=json").await["transfers"]
            .as_array()
            .unwrap()
            .len();
        let r = api
            .http
            .head(api.url(&format!("/uri/{}", seg(&cap))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "300000");
        assert_eq!(r.bytes().await.unwrap().len(), 0);
        let after = api.json("/?t=json").await["transfers"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(before, after, "a HEAD downloads nothing");
        let r = api
            .http
            .get(api.url(&format!("/uri/{}", seg(&cap))))
            .header("range", "bytes=300000-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()["content-range"], "bytes */300000");
        let j = api.json(&format!("/uri/{}?t=json", seg(&cap))).await;
        assert_eq!(j[0], "filenode");
        assert_eq!(j[1]["mutable"], false);
        assert_eq!(j[1]["format"], "CHK");
        assert_eq!(j[1]["size"], 300_000);
        assert_eq!(j[1]["ro_uri"], cap.as_str());
        assert!(j[1].get("rw_uri").is_none());
        let r = api
            .get(&format!("/uri/{}?filename=notes.txt&save=true", seg(&cap)))
            .await;
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(
            r.headers()["content-disposition"],
            "attachment; filename=\"notes.txt\""
        );
        let r = api.get(&format!("/uri?uri={}", seg(&cap))).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(
            r.headers()["location"],
            format!("/uri/{}", seg(&cap)).as_str()
        );
        let r = api.get(&format!("/uri?uri={}&t=json", seg(&cap))).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(
            r.headers()["location"],
            format!("/uri/{}?t=json", seg(&cap)).as_str()
        );

        // A literal file (the data is in the cap) and an empty one.
        let (s, lit) = api.put("/uri", b"twenty bytes of text".to_vec()).await;
        assert_eq!(s, StatusCode::OK);
        assert!(lit.starts_with("folio:LIT:"), "{lit}");
        assert_eq!(
            api.text(&format!("/uri/{}", seg(&lit))).await,
            (StatusCode::OK, "twenty bytes of text".to_string())
        );
        let (s, empty) = api.put("/uri", Vec::new()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(api.text(&format!("/uri/{}", seg(&empty))).await.1, "");

        // A mutable file.
        let (s, mcap) = api.put("/uri?format=MDMF", b"version one".to_vec()).await;
        assert_eq!(s, StatusCode::OK, "{mcap}");
        assert!(mcap.starts_with("folio:MUT:"), "{mcap}");
        assert_eq!(
            api.text(&format!("/uri/{}", seg(&mcap))).await.1,
            "version one"
        );
        let j = api.json(&format!("/uri/{}?t=json", seg(&mcap))).await;
        assert_eq!(j[1]["mutable"], true);
        assert_eq!(j[1]["rw_uri"], mcap.as_str());
        // A mutable file may change between two reads: no ranges, the whole version.
        let r = api
            .http
            .get(api.url(&format!("/uri/{}", seg(&mcap))))
            .header("range", "bytes=8-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("accept-ranges").is_none());
        assert_eq!(r.text().await.unwrap(), "version one");

        // Directories by path.
        let (s, dir) = api.post("/uri?t=mkdir").await;
        assert_eq!(s, StatusCode::OK, "{dir}");
        assert!(dir.starts_with("folio:DIR:"), "{dir}");
        let d = seg(&dir);
        let file_at = format!("/uri/{d}/docs/2026/notes.txt");
        let (s, c1) = api.put(&file_at, b"first".to_vec()).await;
        assert_eq!(s, StatusCode::CREATED, "{c1}");
        let (s, _) = api.put(&file_at, b"second".to_vec()).await;
        assert_eq!(s, StatusCode::OK, "a replacement is 200");
        let (s, msg) = api
            .put(&format!("{file_at}?replace=false"), b"third".to_vec())
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{msg}");
        let (s, msg) = api
            .put(&format!("{file_at}?replace=0"), b"third".to_vec())
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "Tahoe's spellings: {msg}");
        let (s, msg) = api
            .put(&format!("/uri/{d}/docs?replace=only-files"), b"x".to_vec())
            .await;
        assert_eq!(
            s,
            StatusCode::CONFLICT,
            "only-files keeps a directory: {msg}"
        );
        let (s, msg) = api
            .put(&format!("{file_at}?replace=maybe"), b"x".to_vec())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{msg}");
        let r = api.get(&file_at).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(r.text().await.unwrap(), "second");
        let top = api.json(&format!("/uri/{d}?t=json")).await;
        assert_eq!(top[0], "dirnode");
        assert_eq!(top[1]["rw_uri"], dir.as_str());
        assert_eq!(top[1]["children"]["docs"][0], "dirnode");
        let inner = api.json(&format!("/uri/{d}/docs/2026?t=json")).await;
        let child = &inner[1]["children"]["notes.txt"];
        assert_eq!(child[0], "filenode");
        assert_eq!(child[1]["size"], 6);
        assert!(child[1]["metadata"]["tahoe"]["linkcrtime"].is_u64());
        let (s, html) = api.text(&format!("/uri/{d}/docs/2026/")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(html.contains(">notes.txt</a>"), "{html}");
        let (s, unlinked) = api.put("/uri?t=mkdir", Vec::new()).await;
        assert_eq!(s, StatusCode::OK, "{unlinked}");
        assert!(
            unlinked.starts_with("folio:DIR:"),
            "PUT /uri?t=mkdir: {unlinked}"
        );
        let (s, msg) = api.put("/uri?t=nonsense", b"x".to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{msg}");
        let (s, made) = api
            .post(&format!("/uri/{d}/docs?t=mkdir&name=drafts"))
            .await;
        assert_eq!(s, StatusCode::OK, "{made}");
        assert!(made.starts_with("folio:DIR:"));
        let (s, again) = api
            .put(&format!("/uri/{d}/docs/drafts?t=mkdir"), Vec::new())
            .await;
        assert_eq!(
            (s, again.as_str()),
            (StatusCode::OK, made.as_str()),
            "mkdir is idempotent"
        );
        let (s, linked) = api
            .put(&format!("/uri/{d}/lit?t=uri"), lit.clone().into_bytes())
            .await;
        assert_eq!((s, linked.as_str()), (StatusCode::CREATED, lit.as_str()));
        let (s, msg) = api
            .put(
                &format!("/uri/{d}/docs/2026/notes.txt/x?t=mkdir"),
                Vec::new(),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "a file in the way: {msg}");
        let (s, removed) = api.delete(&file_at).await;
        assert_eq!(s, StatusCode::OK, "{removed}");
        assert!(removed.starts_with("folio:"), "{removed}");
        let (s, msg) = api.text(&file_at).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{msg}");
        assert!(msg.contains("notes.txt"), "{msg}");
        let (s, _) = api.delete(&file_at).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Read-only authority.
        let ro = top[1]["ro_uri"].as_str().unwrap().to_string();
        assert!(ro.starts_with("folio:DIR-RO:"), "{ro}");
        let (s, msg) = api
            .put(&format!("/uri/{}/x.txt", seg(&ro)), b"x".to_vec())
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{msg}");
        assert!(msg.contains("read-only"), "{msg}");
        let ro_json = api.json(&format!("/uri/{}?t=json", seg(&ro))).await;
        assert!(ro_json[1].get("rw_uri").is_none());
        assert!(!ro_json.to_string().contains("folio:DIR:"), "{ro_json}");

        // Errors a person can read.
        let (s, msg) = api.text("/uri/not-a-cap").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{msg}");
        let (s, _) = api.text(&format!("/uri/{}?t=bogus", seg(&cap))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // A body larger than a mutable file can hold is refused as it passes the limit.
        let params = folio_node::immutable::EncodingParams {
            needed: 2,
            happy: 3,
            total: 5,
            ..Default::default()
        };
        let max = folio_node::mutable::max_mutable_size(&params) as usize;
        let (s, msg) = api.put("/uri?format=SDMF", data(9, max + 1)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{msg}");
        assert!(msg.contains(&format!("at most {max} bytes")), "{msg}");
        let (s, _) = api.put("/uri?format=XYZ", b"x".to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = api.text("/no/such/page").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // A well-formed cap of a file no server holds.
        let missing = other_cap(&cap);
        let (s, msg) = api.text(&format!("/uri/{}", seg(&missing))).await;
        assert_eq!(s, StatusCode::GONE, "{msg}");

        // No cross-origin writes; no other Host.
        let r = api
            .http
            .put(api.url("/uri"))
            .header("origin", "http://evil.example")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = api
            .http
            .post(api.url("/uri?t=mkdir"))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let own = api.base.trim_end_matches('/').to_string();
        let r = api
            .http
            .put(api.url("/uri"))
            .header("origin", own)
            .header("sec-fetch-site", "same-origin")
            .body("same origin is fine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // Another site's page may not make the node fetch a cap (an <img>), but a person
        // may follow a link to it.
        let at = api.url(&format!("/uri/{}", seg(&cap)));
        let r = api
            .http
            .get(&at)
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "no-cors")
            .header("sec-fetch-dest", "image")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "a cross-site <img>");
        let r = api
            .http
            .get(&at)
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-user", "?1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "a followed link");
        assert_eq!(r.bytes().await.unwrap().len(), 300_000);
        for (site, mode, user, dest, want, what) in [
            (
                "cross-site",
                "navigate",
                None,
                "document",
                403,
                "a navigation nobody clicked",
            ),
            (
                "cross-site",
                "navigate",
                Some("?1"),
                "iframe",
                403,
                "a frame",
            ),
            (
                "same-site",
                "no-cors",
                None,
                "image",
                403,
                "another port's page",
            ),
            (
                "same-origin",
                "no-cors",
                None,
                "image",
                200,
                "a page of the gateway's own",
            ),
            (
                "none",
                "navigate",
                Some("?1"),
                "document",
                200,
                "a typed URL",
            ),
        ] {
            let mut req = api
                .http
                .head(&at)
                .header("sec-fetch-site", site)
                .header("sec-fetch-mode", mode)
                .header("sec-fetch-dest", dest);
            if let Some(u) = user {
                req = req.header("sec-fetch-user", u);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), want, "{what}");
        }
        let port = api.base.rsplit(':').next().unwrap().trim_end_matches('/');
        let r = api
            .http
            .get(api.url("/"))
            .header("host", format!("evil.example:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "DNS rebinding");

        // The transfers appear on the welcome page.
        let v = api.json("/?t=json").await;
        let transfers = v["transfers"].as_array().unwrap();
        assert!(
            transfers
                .iter()
                .any(|t| t["kind"] == "upload" && t["phase"] == "done" && t["total"] == 300_000),
            "{v:#}"
        );
        assert!(!v.to_string().contains(&cap), "the status holds no cap");
        dir
    });

    // `tahoe webopen`: with no browser and no display, it prints the URL; with one, it
    // runs it on the URL of the place named.
    let webopen = |extra: &[&str], browser: Option<&str>| {
        let mut c = common::tahoe();
        c.arg("webopen").args(extra).arg("-d").arg(&grid.client);
        c.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
        match browser {
            Some(b) => c.env("BROWSER", b),
            None => c.env_remove("BROWSER"),
        };
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (url, note) = webopen(&[], None);
    assert_eq!(url.trim(), api.base);
    assert!(note.contains("no browser"), "{note}");
    let (url, _) = webopen(&["--print"], Some("/bin/false"));
    assert_eq!(url.trim(), api.base);
    let opened = grid.base.join("opened");
    let script = grid.base.join("browser.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" > {}\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    common::tahoe()
        .args(["add-alias", "site"])
        .arg(&dir_cap)
        .arg("-d")
        .arg(&grid.client)
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("add-alias");
    let (url, _) = webopen(&["site:docs/drafts"], Some(script.to_str().unwrap()));
    assert!(
        url.trim()
            .starts_with(&format!("{}uri/folio:DIR:", api.base))
            && url.trim().ends_with("/docs/drafts"),
        "{url}"
    );
    assert_eq!(std::fs::read_to_string(&opened).unwrap().trim(), url.trim());

    // A server going down and coming back shows without a reload.
    let mut s4 = grid.nodes.pop().unwrap();
    s4.terminate();
    assert!(s4.wait_timeout(Duration::from_secs(30)).success());
    rt().block_on(async {
        let v = api
            .welcome_until(Duration::from_secs(60), |v| v["connected_servers"] == 4)
            .await;
        let down: Vec<&Value> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["connected"] == false)
            .collect();
        assert_eq!(down.len(), 1);
        assert_eq!(down[0]["nickname"], "s4");
        assert!(down[0]["connection_status"]
            .as_str()
            .unwrap()
            .starts_with("not connected"));
    });
    grid.nodes.push(run(&grid.base.join("s4")));
    rt().block_on(async {
        api.welcome_until(Duration::from_secs(120), |v| v["connected_servers"] == 5)
            .await;
    });
    common::stop_all(&mut grid.nodes, Duration::from_secs(30));
    assert!(
        !grid.client.join("node.url").exists(),
        "node.url is removed when the node stops"
    );
}

/// `cap` with one character of its key changed: well-formed, naming nothing stored.
fn other_cap(cap: &str) -> String {
    let mut parts: Vec<String> = cap.split(':').map(str::to_string).collect();
    let key = &mut parts[2];
    let first = key.remove(0);
    key.insert(0, if first == 'a' { 'b' } else { 'a' });
    parts.join(":")
}
