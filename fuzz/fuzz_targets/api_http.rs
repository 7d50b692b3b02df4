//! The API socket as a client reaches it: the fuzzer's bytes go down a connection to ember's
//! real server (HTTP framing, routing, JSON bodies), whose "VMM" answers every action. The
//! server must answer with a sequence of well-formed HTTP responses and close the connection
//! cleanly, within seconds, whatever it was sent.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use api_server::request::VmmData;
use api_server::server::{self, Limits, SocketFile, VmmLink};
use ember_fuzz::{event, scratch};
use libfuzzer_sys::fuzz_target;

/// The server, started once per process; its VMM thread answers GETs with JSON, the rest
/// with 204.
fn socket() -> &'static PathBuf {
    static SOCKET: OnceLock<(PathBuf, SocketFile)> = OnceLock::new();
    &SOCKET
        .get_or_init(|| {
            let path = scratch("api.sock");
            let (listener, file) = server::bind(&path).expect("bind the API socket");
            let (actions, requests) = mpsc::channel();
            let (answers, responses) = mpsc::channel();
            let link = VmmLink {
                actions,
                notify: event(),
                responses,
            };
            std::thread::spawn(move || server::serve(listener, link, Limits::new(1024)));
            std::thread::spawn(move || {
                for action in requests {
                    let name = format!("{action:?}");
                    let data = if name.starts_with("Get") {
                        VmmData::Json(serde_json::json!({ "action": name }))
                    } else {
                        VmmData::Empty
                    };
                    if answers.send(Ok(data)).is_err() {
                        return;
                    }
                }
            });
            (path, file)
        })
        .0
}

/// Splits `out` into responses; panics on anything that is not one.
fn check_responses(mut out: &[u8]) {
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not an HTTP response: {other:?} in {:?}",
                String::from_utf8_lossy(out)
            ),
        };
        let code = resp.code.expect("a status code");
        assert!(
            matches!(code, 200 | 204 | 400 | 413),
            "unexpected status {code}"
        );
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("a numeric Content-Length")
            });
        assert!(out.len() >= head + len, "a response cut short");
        if len > 0 {
            let body: serde_json::Value =
                serde_json::from_slice(&out[head..head + len]).expect("a JSON body");
            if code != 200 {
                assert!(
                    body["fault_message"].is_string(),
                    "a fault without a message"
                );
            }
        }
        out = &out[head + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let mut conn = UnixStream::connect(socket()).expect("connect to the API socket");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a timeout");
    let mut out = Vec::new();
    std::thread::scope(|s| {
        let mut writer = conn.try_clone().expect("clone the connection");
        s.spawn(move || {
            // The server may close first (a malformed request): that is a clean end.
            let _ = writer.write_all(data);
            let _ = writer.shutdown(Shutdown::Write);
        });
        if let Err(err) = conn.read_to_end(&mut out) {
            assert!(
                err.kind() != std::io::ErrorKind::WouldBlock,
                "the server neither answered nor closed within 10 s"
            );
        }
    });
    check_responses(&out);
});
