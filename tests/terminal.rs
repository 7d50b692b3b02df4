//! ember at a person's terminal, on pseudo-terminals: raw mode while a VM runs and restored
//! after, the console's escape keys, and `ember ... &` in a shell with job control, which must
//! leave the terminal alone. Tiny ring-0 guests stand in for Linux: the guest is not the point.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn an_interactive_terminal_is_raw_while_ember_runs_and_restored_after() {
    if !kvm_available() {
        return;
    }
    // script(1) (util-linux) gives the shell a pseudo-terminal; stty reads its settings before,
    // during (from the background) and after a run that ends by timeout.
    let shell = format!(
        "stty -g; (sleep 1; stty -g </dev/tty) & {} --kernel {} --timeout 2; echo status=$?; wait; stty -g",
        env!("CARGO_BIN_EXE_ember"),
        guest("spin").display()
    );
    let out = run(
        std::process::Command::new("script").args(["-qec", &shell, "/dev/null"]),
        LIMIT,
    );
    let log = text(&out.stdout);
    let settings: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| l.matches(':').count() > 20)
        .collect();
    assert_eq!(settings.len(), 3, "three stty readings expected:\n{log}");
    let (before, during, after) = (settings[0], settings[1], settings[2]);
    assert_ne!(
        during, before,
        "the terminal was not in raw mode while ember ran"
    );
    assert_eq!(after, before, "the terminal settings were not restored");
    assert!(log.contains("status=124"), "{log}");
}

#[test]
fn ctrl_a_x_ends_a_running_vm_and_restores_the_terminal() {
    if !kvm_available() {
        return;
    }
    let mut term = Terminal::start(&format!(
        "stty -g; {} --kernel {}; echo status=$?; stty -g",
        env!("CARGO_BIN_EXE_ember"),
        guest("spin").display()
    ));
    term.wait_for("spinning", 0, LIMIT);
    // Ctrl-A h lists the keys, and Ctrl-C is the guest's: neither ends the VM.
    let mark = term.shown.len();
    term.type_keys(b"\x03\x01h");
    term.wait_for("Ctrl-A x", mark, LIMIT);
    term.type_keys(b"\x01x");
    let (status, shown) = term.finish(LIMIT);
    assert_eq!(status, 0, "{shown}");
    assert!(shown.contains("status=130"), "{shown}");
    assert!(
        shown.contains("\nember: the VM was ended from the console (Ctrl-A x)"),
        "the closing message is not on a line of its own:\n{shown}"
    );
    let settings: Vec<&str> = shown
        .lines()
        .map(str::trim)
        .filter(|l| l.matches(':').count() > 20)
        .collect();
    assert_eq!(settings.len(), 2, "two stty readings expected:\n{shown}");
    assert_eq!(
        settings[0], settings[1],
        "the terminal settings were not restored"
    );
}

#[test]
fn a_background_ember_boots_over_the_api_and_is_never_stopped() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("terminal-background");
    let (sock, log) = (dir.join("api.sock"), dir.join("ember.log"));
    // An interactive bash has job control: `&` puts ember in a process group of its own that
    // does not own the terminal, as in the README's API example.
    let mut term = Terminal::start("bash --norc --noprofile -i");
    term.type_keys(
        format!(
            "{} --api-sock {} --level Debug --log-path {} & echo ember-\"\"pid=$!\n",
            env!("CARGO_BIN_EXE_ember"),
            sock.display(),
            log.display()
        )
        .as_bytes(),
    );
    term.wait_for("ember-pid=", 0, LIMIT);
    let mut c = ApiClient::connect(&sock);
    let boot = json!({"kernel_image_path": guest("spin")});
    let (status, body) = c.request("PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(status, 204, "{body}");
    let (status, body) = c.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{body}");
    term.wait_for("spinning", 0, LIMIT);
    let (_, body) = c.request("GET", "/", None);
    assert!(body.contains(r#""state":"Running""#), "{body}");
    let pid = term.shown.split("ember-pid=").nth(1).unwrap();
    let pid: u32 = pid
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_ne!(
        state, "T",
        "ember was stopped by the terminal:\n{}",
        term.shown
    );
    term.type_keys(b"kill %1; wait %1; echo ember-\"\"status=$?; exit\n");
    let (_, shown) = term.finish(LIMIT);
    assert!(shown.contains("ember-status=143"), "{shown}");
    assert!(!shown.contains("Stopped"), "{shown}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("running in the background, so the console neither reads the terminal"),
        "{log}"
    );
}
