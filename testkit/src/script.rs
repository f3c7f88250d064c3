//! Runs tests/mqtt5.py, the MQTT 5 scenarios written in Python against
//! paho-mqtt 2 and hand-made packets: a client that shares no code with the
//! broker. Each scenario prints what it saw and exits non-zero naming the
//! check that failed.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The scenarios, one function each.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/mqtt5.py");

/// Every scenario bounds its own waits and takes seconds; this bounds a hung
/// interpreter.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of the script did: its exit status (`None`: killed at the
/// timeout), stdout and stderr.
struct Outcome {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `python3 tests/mqtt5.py SCENARIO PORT...`, killing it after
/// [`SCRIPT_TIMEOUT`].
fn run_script(scenario: &str, ports: &[u16]) -> Outcome {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .arg(scenario)
        .args(ports.iter().map(u16::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (with paho-mqtt 2: pip install 'paho-mqtt>=2,<3')");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Runs `scenario` against the MQTT ports `ports` (one broker, or nodes of a
/// cluster); panics, with what the script printed, unless it exits 0.
pub async fn run(scenario: &'static str, ports: &[u16]) {
    let ports = ports.to_vec();
    let outcome = tokio::task::spawn_blocking(move || run_script(scenario, &ports))
        .await
        .expect("the blocking task");
    let Outcome {
        status,
        stdout,
        stderr,
    } = outcome;
    let verdict = match status {
        Some(status) if status.success() => {
            // Shown with --nocapture.
            println!("{stdout}{stderr}");
            return;
        }
        Some(status) => format!("exited with {status}"),
        None => format!("still running after {SCRIPT_TIMEOUT:?}, killed"),
    };
    let hint = if stderr.contains("No module named 'paho'") {
        " (paho-mqtt 2 is not installed: pip install 'paho-mqtt>=2,<3')"
    } else {
        ""
    };
    panic!(
        "MQTT 5 scenario {scenario}: tests/mqtt5.py {verdict}{hint}\n\
         ----- stdout -----\n{stdout}\n----- stderr -----\n{stderr}"
    );
}
