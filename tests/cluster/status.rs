//! The status page at `/`, loaded by a real browser: Debian's headless
//! chromium runs the page's script against a running three-node cluster, and
//! the test reads what the page then shows.
//!
//! Set `STATUS_SCREENSHOT=/some/path.png` to keep the screenshot the
//! test takes (not `STARLING_...`: the nodes would take it for a config key).

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::{http_request, Cluster};

const WAIT: Duration = Duration::from_secs(10);

/// Longest a chromium run may take before the test kills it and fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Virtual milliseconds the page runs in chromium: the page refreshes every
/// two seconds, so it takes several samples, and rates from them.
const VIRTUAL_TIME_MS: &str = "6000";

const INSTALL_HINT: &str = "chromium not found on PATH: install it \
     (Debian: `apt-get install chromium`) to run this test";

/// Node `id`'s view of the cluster, from its admin API.
async fn cluster_view(cluster: &Cluster, id: u64) -> Value {
    let port = cluster.node(id).http;
    let (status, body) = http_request(port, "GET", "/api/v1/cluster", WAIT)
        .await
        .unwrap_or_else(|| panic!("node {id} answers GET /api/v1/cluster"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The member `id` of a cluster view.
fn member(view: &Value, id: u64) -> &Value {
    view["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["id"] == id))
        .unwrap_or_else(|| panic!("no member {id} in {view}"))
}

/// Waits until node `id` sees a leader, every member up, and one connection
/// through node 2; returns that view.
async fn settled_view(cluster: &Cluster, id: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let view = cluster_view(cluster, id).await;
        let all_up = view["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["up"] == true));
        if view["leader"].is_u64() && all_up && member(&view, 2)["connections"] == 1 {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} does not show the settled cluster: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs headless chromium on `url` with `args`, in its own profile under
/// `dir`, and returns what it wrote to stdout. Fails the test when chromium is
/// missing, fails, or runs longer than `CHROMIUM_TIMEOUT` (then it is killed,
/// with the processes it started).
fn chromium(dir: &Path, args: &[&str], url: &str) -> String {
    let profile = dir.join("profile");
    let stdout_path = dir.join("stdout");
    let stdout = std::fs::File::create(&stdout_path).unwrap();
    let mut child = match Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills its helpers too.
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
        Err(e) => panic!("cannot start chromium: {e}"),
    };
    let stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("chromium {args:?} ran over {CHROMIUM_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr.join().unwrap_or_default();
    assert!(status.success(), "chromium {args:?}: {status}\n{stderr}");
    std::fs::read_to_string(&stdout_path).unwrap()
}

/// Runs `f` on a blocking thread; its panic, if any, is the test's.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The text of the element whose id is `id` (up to its first child).
fn text_by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id:?} in the page:\n{dom}"));
    text_after(&dom[at..])
}

/// The text after the end of the tag that `from` starts inside.
fn text_after(from: &str) -> &str {
    let start = from.find('>').map_or(from.len(), |i| i + 1);
    let rest = &from[start..];
    rest[..rest.find('<').unwrap_or(rest.len())].trim()
}

/// The rows of the members table, `tr[data-member]`: the member's id and
/// the row's markup.
fn member_rows(dom: &str) -> Vec<(u64, &str)> {
    dom.split("<tr data-member=\"")
        .skip(1)
        .map(|row| {
            let row = &row[..row.find("</tr>").unwrap_or(row.len())];
            let id = row[..row.find('"').unwrap()].parse().unwrap();
            (id, row)
        })
        .collect()
}

/// The text of a row's cell `td[data-field=field]`.
fn field<'a>(row: &'a str, field: &str) -> &'a str {
    let at = row
        .find(&format!("data-field=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} cell in the row {row}"));
    text_after(&row[at..])
}

#[tokio::test]
async fn the_status_page_shows_the_cluster_in_a_browser() {
    let cluster = Cluster::start(3).await;
    let _client = Client::connect(client::options(cluster.mqtt(2), "status-page")).await;
    let before = settled_view(&cluster, 1).await;
    let leader = before["leader"].as_u64().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/", cluster.node(1).http);
    let dump = {
        let (dir, url) = (dir.path().to_owned(), url.clone());
        blocking(move || {
            let budget = format!("--virtual-time-budget={VIRTUAL_TIME_MS}");
            chromium(&dir, &[&budget, "--dump-dom"], &url)
        })
        .await
    };
    let after = cluster_view(&cluster, 1).await;
    assert_eq!(
        after["leader"], leader,
        "the leader changed during the test"
    );

    // The page read the API (no token: the test is on loopback) and filled in.
    assert!(dump.contains("<body data-state=\"live\""), "{dump}");
    assert_eq!(text_by_id(&dump, "node-id"), "1", "the node answering");
    assert_eq!(text_by_id(&dump, "leader"), leader.to_string());
    assert_eq!(text_by_id(&dump, "term"), after["term"].to_string());
    assert_eq!(text_by_id(&dump, "members-up"), "3 of 3");
    assert!(
        text_by_id(&dump, "applied-index").parse::<u64>().is_ok(),
        "{dump}"
    );
    // Successive samples of /api/v1/node gave rates.
    for rate in ["rate-in", "rate-out", "rate-dropped"] {
        let shown = text_by_id(&dump, rate);
        assert!(shown.parse::<f64>().is_ok(), "{rate}: {shown:?}");
    }

    let rows = member_rows(&dump);
    let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3], "one row per member, by id");
    for (id, row) in rows {
        let connections = if id == 2 { "1" } else { "0" };
        assert_eq!(field(row, "connections"), connections, "member {id}");
        assert_eq!(field(row, "up"), "up", "member {id}");
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(field(row, "role"), role, "member {id}");
        assert_eq!(
            field(row, "address"),
            cluster.node(id).cluster_addr(),
            "member {id}"
        );
    }

    // A screenshot, to look at: the page laid out at a desktop size.
    let png = std::env::var_os("STATUS_SCREENSHOT")
        .map_or_else(|| dir.path().join("status.png"), Into::into);
    let shot = {
        let (dir, url, png) = (dir.path().to_owned(), url.clone(), png.clone());
        blocking(move || {
            let budget = format!("--virtual-time-budget={VIRTUAL_TIME_MS}");
            let screenshot = format!("--screenshot={}", png.display());
            chromium(
                &dir,
                &[&budget, &screenshot, "--window-size=1200,800"],
                &url,
            );
            std::fs::read(&png).unwrap()
        })
        .await
    };
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    assert!(shot.len() > 10_000, "the screenshot is not blank");
}
