//! Helpers for the tests that drive ember's REST API: requests that must succeed or be refused,
//! Firecracker's fixed answers, and reading what ember writes (metrics, console).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ApiClient;

/// Parses an answer's JSON body.
pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `PUT /actions` InstanceStart.
pub const START: &str = r#"{"action_type": "InstanceStart"}"#;
/// Firecracker's answer to a pre-boot action after boot.
pub const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's answer to a runtime action before boot.
pub const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// Sends a request that must be refused; returns its fault message.
pub fn refused(c: &mut ApiClient, method: &str, path: &str, body: &str) -> String {
    let (status, answer) = c.request(method, path, Some(body));
    assert_eq!(status, 400, "{method} {path}: {answer}");
    fault(&answer)
}

/// Sends a request that must succeed with an empty 204.
pub fn done(c: &mut ApiClient, method: &str, path: &str, body: &str) {
    let (status, answer) = c.request(method, path, Some(body));
    assert_eq!((status, answer.as_str()), (204, ""), "{method} {path}");
}

/// The fault message of a 400.
pub fn fault(body: &str) -> String {
    json(body)["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message in {body}"))
        .to_owned()
}

/// The JSON lines of a metrics file.
pub fn metric_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

/// Linux's console line when it has probed everything and waits for the root device.
pub const WAITING_FOR_ROOT: &str = "Waiting for root device /dev/vdz";

/// Waits up to `limit` for `path` to contain `needle`; returns the file's text.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
