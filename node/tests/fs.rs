//! The filesystem commands across real processes: an introducer and ten storage nodes
//! (`tahoe run`), and the commands a Tahoe-LAFS user types first — `create-alias`, `cp -r`,
//! `ls`, `get`, `mv`, `ln`, `rm`, `put --mutable` — against them.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use folio_tests::ChildGuard;

mod common;
use common::procs::ProcGrid;
use common::{create, run, stop_all, tahoe};

fn tahoe_in(dir: &Path, args: &[&str]) -> Output {
    tahoe().args(args).arg("-d").arg(dir).output().unwrap()
}

/// Runs `tahoe ARGS -d DIR`, which must succeed; returns its stdout.
fn ok_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = tahoe_in(dir, args);
    assert!(
        out.status.success(),
        "tahoe {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// [`ok_bytes`], as text.
fn ok(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(ok_bytes(dir, args))
        .unwrap_or_else(|e| panic!("tahoe {args:?}: not text: {:?}", e.as_bytes()))
}

/// Runs `tahoe ARGS -d DIR`, which must fail; returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = tahoe_in(dir, args);
    assert!(
        !out.status.success(),
        "tahoe {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn data(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed as u8)
        .collect()
}

/// A local tree: nested folders, files of 0, 10, 55 (LIT), 56 and 300,000 bytes.
fn local_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("empty.txt".to_string(), Vec::new()),
        ("ten.bin".to_string(), data(1, 10)),
        ("a/lit55.bin".to_string(), data(2, 55)),
        ("a/b/chk56.bin".to_string(), data(3, 56)),
        ("a/b/c/big.bin".to_string(), data(4, 300_000)),
    ];
    for (rel, bytes) in &files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    files
}

#[test]
fn a_tree_copied_in_listed_read_changed_and_read_with_seven_servers_down() {
    let mut g = ProcGrid::start(10, &[]);
    let c = g.client.clone();
    ok(&c, &["create-alias", "tahoe"]);
    assert!(lines(&ok(&c, &["list-aliases"]))[0].starts_with("tahoe: folio:DIR:"));
    let err = fails(&c, &["create-alias", "tahoe"]);
    assert!(err.contains("already exists"), "{err}");

    let src = g.base.join("tree");
    let files = local_tree(&src);
    ok(&c, &["cp", "-r", src.to_str().unwrap(), "tahoe:"]);
    assert_eq!(lines(&ok(&c, &["ls", "tahoe:"])), ["tree"]);
    assert_eq!(
        lines(&ok(&c, &["ls", "tahoe:tree"])),
        ["a", "empty.txt", "ten.bin"]
    );
    let long = ok(&c, &["ls", "-l", "tahoe:tree/a/b"]);
    assert!(long.contains("drw") && long.contains(" c/"), "{long}");
    assert!(long.contains("56 ") && long.contains("chk56.bin"), "{long}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&c, &["ls", "--json", "tahoe:tree/a/b/c"])).unwrap();
    assert_eq!(json["is_dir"], true);
    assert_eq!(json["entries"][0]["name"], "big.bin");
    assert_eq!(json["entries"][0]["size"], 300_000);
    assert!(json["entries"][0]["ro_uri"]
        .as_str()
        .unwrap()
        .starts_with("folio:CHK:"));

    // Every file back, identical, by path.
    let out = g.base.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for (i, (rel, bytes)) in files.iter().enumerate() {
        let dest = out.join(format!("f{i}"));
        ok(
            &c,
            &["get", &format!("tahoe:tree/{rel}"), dest.to_str().unwrap()],
        );
        assert_eq!(&std::fs::read(&dest).unwrap(), bytes, "{rel}");
    }
    // And the whole tree back with cp -r.
    let back = g.base.join("back");
    ok(&c, &["cp", "-r", "tahoe:tree", back.to_str().unwrap()]);
    for (rel, bytes) in &files {
        assert_eq!(&std::fs::read(back.join(rel)).unwrap(), bytes, "{rel}");
    }

    // A mutable file, put by name, then updated in place.
    let m = g.base.join("m.txt");
    std::fs::write(&m, b"version one").unwrap();
    let wcap = ok(
        &c,
        &["put", "--mutable", m.to_str().unwrap(), "tahoe:tree/m.txt"],
    );
    assert!(wcap.trim().starts_with("folio:MUT:"), "{wcap}");
    std::fs::write(&m, b"version two").unwrap();
    ok(&c, &["put", m.to_str().unwrap(), "tahoe:tree/m.txt"]);
    assert_eq!(ok(&c, &["get", "tahoe:tree/m.txt"]), "version two");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&c, &["ls", "--json", "tahoe:tree/m.txt"])).unwrap();
    assert_eq!(json["entries"][0]["kind"], "mutable");
    assert_eq!(json["entries"][0]["rw_uri"].as_str().unwrap(), wcap.trim());

    // mv, ln, rm change what ls shows.
    ok(&c, &["mv", "tahoe:tree/ten.bin", "tahoe:tree/eleven.bin"]);
    ok(&c, &["mv", "tahoe:tree/empty.txt", "tahoe:tree/a"]);
    ok(
        &c,
        &["ln", "tahoe:tree/a/b/chk56.bin", "tahoe:tree/link56.bin"],
    );
    ok(&c, &["rm", "tahoe:tree/a/lit55.bin"]);
    assert_eq!(
        lines(&ok(&c, &["ls", "tahoe:tree"])),
        ["a", "eleven.bin", "link56.bin", "m.txt"]
    );
    assert_eq!(lines(&ok(&c, &["ls", "tahoe:tree/a"])), ["b", "empty.txt"]);
    assert_eq!(ok_bytes(&c, &["get", "tahoe:tree/link56.bin"]), data(3, 56));
    let err = fails(&c, &["get", "tahoe:tree/a/lit55.bin"]);
    assert!(
        err.contains("tahoe:tree/a/lit55.bin") && err.contains("no entry"),
        "{err}"
    );

    // A read-only alias lists and reads, and cannot write; it shows no write caps.
    let aliases = ok(&c, &["list-aliases", "--readonly-uri"]);
    let ro = aliases.trim().strip_prefix("tahoe: ").unwrap().to_string();
    assert!(ro.starts_with("folio:DIR-RO:"), "{ro}");
    ok(&c, &["add-alias", "ro", &ro]);
    assert_eq!(
        lines(&ok(&c, &["ls", "ro:tree"])),
        ["a", "eleven.bin", "link56.bin", "m.txt"]
    );
    assert_eq!(ok(&c, &["get", "ro:tree/m.txt"]), "version two");
    let json = ok(&c, &["ls", "--json", "ro:tree"]);
    assert!(
        !json.contains("folio:MUT:") && !json.contains("folio:DIR:"),
        "{json}"
    );
    let err = fails(&c, &["put", m.to_str().unwrap(), "ro:tree/new.txt"]);
    assert!(
        err.contains("ro:tree/new.txt") && err.contains("read-only"),
        "{err}"
    );
    let err = fails(&c, &["rm", "ro:tree/m.txt"]);
    assert!(err.contains("read-only"), "{err}");

    // Seven of ten servers stop: everything still lists and reads.
    let mut stopped: Vec<ChildGuard> = g.nodes.drain(3..).collect();
    stop_all(&mut stopped, Duration::from_secs(30));
    assert_eq!(
        lines(&ok(&c, &["ls", "tahoe:tree/a/b"])),
        ["c", "chk56.bin"]
    );
    let again = g.base.join("again");
    ok(&c, &["cp", "-r", "tahoe:tree", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(again.join("a/b/c/big.bin")).unwrap(),
        data(4, 300_000)
    );
    assert_eq!(std::fs::read(again.join("m.txt")).unwrap(), b"version two");
    stop_all(&mut g.nodes, Duration::from_secs(30));
}

/// Two `tahoe put`s to one mutable file at once: never both succeed from the same version,
/// the loser is told it was an uncoordinated write, and the file reads as the winner's.
#[test]
fn two_puts_racing_on_one_mutable_file() {
    let mut g = ProcGrid::start(10, &[]);
    let c = g.client.clone();
    ok(&c, &["create-alias", "tahoe"]);
    let m = g.base.join("m.txt");
    std::fs::write(&m, b"start").unwrap();
    ok(
        &c,
        &["put", "--mutable", m.to_str().unwrap(), "tahoe:m.txt"],
    );
    let (a, b) = (g.base.join("a.txt"), g.base.join("b.txt"));
    std::fs::write(&a, b"from writer a").unwrap();
    std::fs::write(&b, b"from writer b").unwrap();
    let mut saw_race = false;
    for _ in 0..8 {
        let spawn = |f: &Path| {
            tahoe()
                .args(["put", f.to_str().unwrap(), "tahoe:m.txt", "-d"])
                .arg(&c)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        let now = ok(&c, &["get", "tahoe:m.txt"]);
        assert!(now == "from writer a" || now == "from writer b", "{now}");
        match (oa.status.success(), ob.status.success()) {
            (true, true) => continue, // one after the other: both fine
            (true, false) | (false, true) => {
                let loser = if oa.status.success() { &ob } else { &oa };
                let err = String::from_utf8_lossy(&loser.stderr);
                assert!(err.contains("uncoordinated write"), "{err}");
                let winner = if oa.status.success() {
                    "from writer a"
                } else {
                    "from writer b"
                };
                // The loser is always told. Usually it wrote nothing and the file is the
                // winner's; when the two writers saw different versions (one took the
                // other, slow past SETTLE, for abandoned), the loser may have landed
                // enough shares first: then it says how many it had replaced, and readers
                // get the newest version with enough shares (the design's section 4.5).
                assert!(
                    now == winner || err.contains("had replaced"),
                    "the file reads as the loser's, and the loser says nothing of it:\n{err}"
                );
                saw_race = true;
                break;
            }
            (false, false) => panic!(
                "both writers failed:\n{}\n{}",
                String::from_utf8_lossy(&oa.stderr),
                String::from_utf8_lossy(&ob.stderr)
            ),
        }
    }
    assert!(
        saw_race,
        "eight rounds of two concurrent puts never overlapped"
    );
    stop_all(&mut g.nodes, Duration::from_secs(30));
}

/// Waits until the node in `dir` sees `n` storage servers connected.
fn wait_for_servers(dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let up = common::status(dir)
            .and_then(|s| {
                s["storage_servers"]
                    .as_array()
                    .map(|a| a.iter().filter(|x| x["connected"] == true).count())
            })
            .unwrap_or(0);
        if up >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} saw {up} of {n} servers",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client node killed (SIGKILL) at a random point of updating a mutable file, ten times:
/// the file always reads as the old or the new version, and the next update succeeds.
#[test]
fn a_writer_node_killed_mid_update_leaves_old_or_new() {
    let mut g = ProcGrid::start(10, &[]);
    let writer = g.base.join("writer");
    create(&[
        "create-client",
        "--webport=tcp:0:interface=127.0.0.1",
        "--nickname",
        "writer",
        "--introducer",
        &g.furl,
        writer.to_str().unwrap(),
    ]);
    let mut node = run(&writer);
    wait_for_servers(&writer, 10);
    ok(&writer, &["create-alias", "tahoe"]);
    let file = g.base.join("v.bin");
    let mut old = data(100, 200_000);
    std::fs::write(&file, &old).unwrap();
    ok(
        &writer,
        &["put", "--mutable", file.to_str().unwrap(), "tahoe:v.bin"],
    );
    let mut killed_mid = 0;
    for round in 0..10u32 {
        let new = data(round, 200_000 + round as usize);
        std::fs::write(&file, &new).unwrap();
        let mut put = tahoe()
            .args(["put", file.to_str().unwrap(), "tahoe:v.bin", "-d"])
            .arg(&writer)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A pseudo-random point in the first 300 ms (the update takes about that long).
        let delay = (round * 7919 + 13) % 300;
        std::thread::sleep(Duration::from_millis(u64::from(delay)));
        node.crash();
        let _ = node.wait_timeout(Duration::from_secs(10));
        let finished = put.wait().unwrap().success();
        node = run(&writer);
        wait_for_servers(&writer, 10);
        let now = ok_bytes(&writer, &["get", "tahoe:v.bin"]);
        assert!(
            now == old || now == new,
            "round {round} (killed after {delay} ms): neither the old nor the new version"
        );
        if now == old && !finished {
            killed_mid += 1;
        }
        // The next writer finishes the job (over an unfinished version, after SETTLE).
        let next = data(1000 + round, 1000);
        std::fs::write(&file, &next).unwrap();
        ok(&writer, &["put", file.to_str().unwrap(), "tahoe:v.bin"]);
        assert_eq!(ok_bytes(&writer, &["get", "tahoe:v.bin"]), next);
        old = next;
    }
    eprintln!("{killed_mid} of 10 updates were killed before they landed");
    node.terminate();
    let _ = node.wait_timeout(Duration::from_secs(10));
    stop_all(&mut g.nodes, Duration::from_secs(30));
}
