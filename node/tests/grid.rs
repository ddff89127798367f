//! A grid of real `tahoe` processes on 127.0.0.1: an introducer and three storage nodes made
//! with `tahoe create-*`, run with `tahoe run`, watched with `tahoe status --json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use folio_tests::ChildGuard;

mod common;
use common::{create, files_under, run, status, stop_all, tahoe, wait_for_file};

/// (nickname, connected) of every storage server `dir`'s node knows.
fn servers(dir: &Path) -> Vec<(String, bool)> {
    let Some(st) = status(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, bool)> = st["storage_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["nickname"].as_str().unwrap().to_string(),
                s["connected"].as_bool().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn all_up(names: &[&str]) -> Vec<(String, bool)> {
    names.iter().map(|n| (n.to_string(), true)).collect()
}

#[test]
fn every_node_sees_every_storage_server_and_reconnects_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (_intro, furl) = common::introducer(&base.join("introducer"));
    assert!(furl.starts_with("folio://"), "{furl}");

    let names = ["s1", "s2", "s3"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| base.join(n)).collect();
    for (n, d) in names.iter().zip(&dirs) {
        create(&[
            "create-node",
            "--webport=tcp:0:interface=127.0.0.1",
            "--hostname",
            "127.0.0.1",
            "--nickname",
            n,
            "--introducer",
            &furl,
            "--shares-needed=2",
            "--shares-happy=3",
            "--shares-total=4",
            d.to_str().unwrap(),
        ]);
        let cfg = std::fs::read_to_string(d.join("tahoe.cfg")).unwrap();
        assert!(cfg.contains("tcp:127.0.0.1:"), "{cfg}");
    }
    let mut procs: Vec<ChildGuard> = dirs.iter().map(|d| run(d)).collect();

    for d in &dirs {
        wait_until(
            &format!("{} to see all three servers", d.display()),
            Duration::from_secs(60),
            || servers(d) == all_up(&names),
        );
    }
    // The status shows how each server is reached.
    let st = status(&dirs[0]).unwrap();
    assert_eq!(st["introducers"][0]["connected"], true);
    for s in st["storage_servers"].as_array().unwrap() {
        assert!(s["tubid"].as_str().unwrap().len() == 52);
        let handler = s["handler"].as_str().unwrap();
        if s["nickname"] == "s1" {
            assert!(handler.contains("local"), "{s}");
        } else if let Some(hint) = s["winning_hint"].as_str() {
            // This node dialed: the hint and handler that won.
            assert!(handler.contains("tcp"), "{s}");
            assert!(hint.starts_with("tcp:127.0.0.1:"), "{s}");
        } else {
            // The server dialed this node first, and the connection is shared.
            assert!(handler.contains("incoming"), "{s}");
        }
    }

    // A file through the command line: put on s1, get on s2.
    let input = base.join("input.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let out = tahoe()
        .args(["put", "-d"])
        .arg(&dirs[0])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cap = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(cap.starts_with("folio:CHK:"), "{cap}");
    // Piped, so no progress line: only the summary on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\r'), "{err}");
    assert!(err.contains("on 3 servers"), "{err}");
    let output = base.join("output.bin");
    let out = tahoe()
        .args(["get", "-d"])
        .arg(&dirs[1])
        .arg(&cap)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&output).unwrap(), data);
    // A bad cap is refused clearly, and leaves no output file.
    let bad = base.join("bad.bin");
    let out = tahoe()
        .args(["get", "-d"])
        .arg(&dirs[1])
        .args(["folio:CHK:nonsense", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!bad.exists());

    // Stop s3 cleanly: the others report it disconnected.
    procs[2].terminate();
    let code = procs[2].wait_timeout(Duration::from_secs(20));
    assert!(code.success(), "tahoe run exited with {code}");
    for d in &dirs[..2] {
        wait_until(
            &format!("{} to see s3 down", d.display()),
            Duration::from_secs(30),
            || {
                servers(d)
                    == vec![
                        ("s1".into(), true),
                        ("s2".into(), true),
                        ("s3".into(), false),
                    ]
            },
        );
    }
    // Happiness 3 cannot be met with two servers: the upload is refused.
    let out = tahoe()
        .args(["put", "-d"])
        .arg(&dirs[0])
        .arg(base.join("output.bin"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upload failed"), "{err}");
    let st = status(&dirs[0]).unwrap();
    let s3 = &st["storage_servers"][2];
    assert!(
        s3["last_error"].is_string() || s3["next_attempt"].is_number(),
        "{s3}"
    );

    // Restart it: the others reconnect (same port, same FURL), and so does it.
    procs[2] = run(&dirs[2]);
    for d in &dirs {
        wait_until(
            &format!("{} to see all three servers again", d.display()),
            Duration::from_secs(60),
            || servers(d) == all_up(&names),
        );
    }
    stop_all(&mut procs, Duration::from_secs(20));
}

#[test]
fn run_refuses_a_directory_that_is_not_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tahoe().arg("run").arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a node directory"), "{err}");
}

#[test]
fn status_of_a_stopped_node_says_it_is_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("n");
    create(&["create-client", "--webport=none", d.to_str().unwrap()]);
    let out = tahoe().arg("status").arg(&d).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the node running?"), "{err}");
}

/// A storage node killed (SIGKILL) in the middle of an upload keeps no share that looks
/// complete: after a restart the unfinished share is absent and `incoming/` is empty, while a
/// share closed before the crash is intact.
#[test]
fn a_storage_node_killed_mid_upload_keeps_no_partial_share() {
    use folio_node::storage::{CanaryRef, NullCanary, StorageServerRef};
    use folio_rpc::{Bytes, Furl, Identity, Tub, TubConfig};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        "--hostname",
        "127.0.0.1",
        "--nickname",
        "s",
        dir.to_str().unwrap(),
    ]);
    let mut node = run(&dir);
    let furl: Furl = wait_for_file(&dir.join("private/storage.furl"), Duration::from_secs(20))
        .parse()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tub = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(folio_handlers::Registry::with_tcp()),
        TubConfig::default(),
    )
    .unwrap();
    let (finished, unfinished) = ([1u8; 16], [2u8; 16]);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    rt.block_on(async {
        let ss: StorageServerRef = tub.get(&furl).await.unwrap();
        let canary = CanaryRef::serve(NullCanary);
        let shares = BTreeSet::from([0u16]);
        let (_, w) = ss
            .allocate_buckets(
                finished,
                [3; 32],
                [4; 32],
                shares.clone(),
                data.len() as u64,
                canary.clone(),
            )
            .await
            .unwrap();
        w[&0].write(0, Bytes(data.clone())).await.unwrap();
        w[&0].close().await.unwrap();

        let (_, w) = ss
            .allocate_buckets(
                unfinished,
                [3; 32],
                [4; 32],
                shares,
                data.len() as u64,
                canary,
            )
            .await
            .unwrap();
        w[&0]
            .write(0, Bytes(data[..60_000].to_vec()))
            .await
            .unwrap();
        // Keep the writer alive: the node dies with the upload open.
        node.crash();
        let _ = node.wait_timeout(Duration::from_secs(10));
        drop(w);
    });
    let incoming = dir.join("storage/shares/incoming");
    let leftover = files_under(&incoming);
    assert!(
        !leftover.is_empty(),
        "the crash should leave the partial upload in incoming/"
    );

    let _node = run(&dir);
    wait_for_file(&dir.join("private/control.furl"), Duration::from_secs(20));
    rt.block_on(async {
        let ss: StorageServerRef = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(s) = tub.get(&furl).await {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the restarted node is reachable at the same FURL");
        assert!(ss.get_buckets(unfinished).await.unwrap().is_empty());
        let readers = ss.get_buckets(finished).await.unwrap();
        let mut back = Vec::new();
        while back.len() < data.len() {
            let chunk = readers[&0]
                .read(back.len() as u64, 64 * 1024)
                .await
                .unwrap();
            assert!(!chunk.is_empty());
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, data);
        tub.shutdown().await;
    });
    assert!(
        files_under(&incoming).is_empty(),
        "incoming/ was not cleaned at start"
    );
}

/// (tubid, connected) of each introducer `dir`'s node uses, as its status shows them.
fn introducers(dir: &Path) -> Vec<(String, bool)> {
    let Some(st) = status(dir) else {
        return Vec::new();
    };
    st["introducers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["tubid"].as_str().unwrap().to_string(),
                i["connected"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A client with two introducers hears servers through each, and keeps hearing new ones
/// through the second after the first stops: s1 announces only to introducer A, s2 (started
/// after A is gone) only to introducer B.
///
/// How it fails: a node that uses only its first introducer never learns s2; one that uses
/// only the last never learns s1; one whose introducer client stops (or stalls) when one
/// introducer is lost never learns s2 either.
#[test]
fn a_node_with_two_introducers_learns_through_the_other_when_one_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut intros = Vec::new();
    let mut furls = Vec::new();
    for name in ["intro-a", "intro-b"] {
        let (intro, furl) = common::introducer(&base.join(name));
        intros.push(intro);
        furls.push(furl);
    }
    let tubid = |furl: &str| furl.parse::<folio_rpc::Furl>().unwrap().tubid().to_string();
    let (a, b) = (tubid(&furls[0]), tubid(&furls[1]));

    let client = base.join("client");
    create(&[
        "create-client",
        "--webport=tcp:0:interface=127.0.0.1",
        "--nickname",
        "client",
        "--introducer",
        &furls[0],
        "--introducer",
        &furls[1],
        client.to_str().unwrap(),
    ]);
    let _client = run(&client);
    wait_until(
        "the client to connect to both introducers",
        Duration::from_secs(60),
        || {
            let mut got = introducers(&client);
            got.sort();
            let mut want = vec![(a.clone(), true), (b.clone(), true)];
            want.sort();
            got == want
        },
    );

    // s1 announces to introducer A only.
    let storage = |name: &str, furl: &str| {
        let d = base.join(name);
        create(&[
            "create-node",
            "--webport=tcp:0:interface=127.0.0.1",
            "--hostname",
            "127.0.0.1",
            "--nickname",
            name,
            "--introducer",
            furl,
            d.to_str().unwrap(),
        ]);
        run(&d)
    };
    let _s1 = storage("s1", &furls[0]);
    wait_until(
        "the client to hear of s1 through introducer A",
        Duration::from_secs(60),
        || servers(&client) == all_up(&["s1"]),
    );

    // Introducer A stops; the client notices, and still holds B.
    intros[0].terminate();
    assert!(intros[0].wait_timeout(Duration::from_secs(20)).success());
    wait_until(
        "the client to see introducer A down and B up",
        Duration::from_secs(60),
        || {
            let got = introducers(&client);
            got.contains(&(a.clone(), false)) && got.contains(&(b.clone(), true))
        },
    );

    // s2, started now, announces to introducer B only: the client learns of it there.
    let _s2 = storage("s2", &furls[1]);
    wait_until(
        "the client to hear of s2 through introducer B",
        Duration::from_secs(60),
        || servers(&client) == all_up(&["s1", "s2"]),
    );
}
