//! The status page at `/`, as a person sees it: a real browser (Debian's chromium, headless,
//! installed by `scripts/test.sh`) loads it from a running worker, its script fetches
//! `status.json`, and the rendered DOM shows every owned partition with its numbers.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weir_tests::*;

const PARTITIONS: i32 = 3;

/// The DOM chromium renders of `http://addr/` after the page's script has run a few times
/// (virtual time: the 2 s refresh timer fires without waiting for it).
fn rendered_dom(addr: SocketAddr) -> String {
    let profile = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--virtual-time-budget=7000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{addr}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (scripts/test.sh installs Debian's chromium package)");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("chromium status").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not render {addr} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

/// The cell texts of the table row of `name` (`topic/partition`) in `dom`.
fn row_cells(dom: &str, name: &str) -> Vec<String> {
    let start = dom
        .find(&format!("data-partition=\"{name}\""))
        .unwrap_or_else(|| panic!("no row of {name} in the rendered page:\n{dom}"));
    let row = &dom[start..start + dom[start..].find("</tr>").expect("row end")];
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let text = &cell[cell.find('>').expect("td") + 1..];
            text[..text.find("</td>").expect("td end")].to_owned()
        })
        .collect()
}

async fn the_status_page_shows_every_owned_partition(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "status-page", PARTITIONS).await;
    // Two poison records, each failing its two attempts: dead letters.
    let mut records = keyed_records(0, 60, 6);
    for i in 0..2 {
        records.push((format!("bad{i}"), "poison".to_owned()));
    }
    broker.produce(&topic, None, records.clone()).await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .retry(TWO_QUICK_ATTEMPTS)
        .metrics_addr("127.0.0.1:0")
        .build(CountHandler::with_poison("poison", 4))
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);

    // Everything processed (the poison as dead letters) and no lag, by the worker's own
    // numbers.
    let total = |rows: &[Value], field: &str| -> u64 {
        rows.iter().filter_map(|r| r[field].as_u64()).sum()
    };
    wait_until(
        "every record processed, lag known and 0",
        Duration::from_secs(60),
        || async {
            let (code, body) = http_get(addr, "/status.json").await;
            let status: Value =
                serde_json::from_str(&body).map_err(|e| format!("{code} {body}: {e}"))?;
            let rows = status["partitions"].as_array().cloned().unwrap_or_default();
            let (processed, dead) = (total(&rows, "processed"), total(&rows, "dead_letters"));
            // Lag is known once the consumer's statistics brought each high watermark.
            let lags: Vec<&Value> = rows.iter().map(|r| &r["lag"]).collect();
            if rows.len() == PARTITIONS as usize
                && processed == 62
                && dead == 2
                && lags.iter().all(|l| l.as_i64() == Some(0))
            {
                Ok(())
            } else {
                Err(format!(
                    "{} partitions, {processed} processed, {dead} dead letters, lags {lags:?}",
                    rows.len()
                ))
            }
        },
    )
    .await;

    let (code, page) = http_get(addr, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<script>"), "{page}");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(addr))
        .await
        .expect("chromium thread");
    assert!(dom.contains(">ready<"), "the worker shows as ready:\n{dom}");
    assert!(dom.contains(&group), "its group is named:\n{dom}");
    // Columns: partition, lag, lag (s), rate, queue, state, last commit, dead letters,
    // processed, watermark.
    let (mut processed, mut dead) = (0, 0);
    for p in 0..PARTITIONS {
        let name = format!("{topic}/{p}");
        let cells = row_cells(&dom, &name);
        assert_eq!(cells.len(), 10, "{name}: {cells:?}");
        assert_eq!(cells[0], name);
        assert_eq!(cells[1], "0", "{name} has no lag: {cells:?}");
        assert_ne!(
            cells[3], "-",
            "{name}: a rate after two refreshes: {cells:?}"
        );
        assert!(
            cells[4].contains(" / "),
            "{name}: queue depth / capacity: {cells:?}"
        );
        assert_eq!(cells[5], "running", "{name}: {cells:?}");
        assert!(cells[6].ends_with(" ago"), "{name} committed: {cells:?}");
        dead += cells[7].parse::<u64>().expect("dead letters");
        processed += cells[8].parse::<u64>().expect("processed");
    }
    assert_eq!((processed, dead), (62, 2), "the page's totals");
    let refreshes: u32 = dom
        .split("<span id=\"refreshes\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refreshes >= 2, "the page refreshed itself: {refreshes}");
    worker.stop_cleanly().await;
}

on_both_brokers!(status_page, the_status_page_shows_every_owned_partition);
