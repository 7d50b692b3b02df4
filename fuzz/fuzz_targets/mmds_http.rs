//! The MMDS HTTP request parser: the input is what a guest sends on one connection
//! (pipelined requests, or anything), answered request by request as the stack does. Each
//! answer consumes part of the input and is a well-formed HTTP response whose
//! Content-Length is its body's.
//!
//! Input: flags (bit 0 V2, bit 1 IMDS answers), then the connection's bytes.
#![no_main]

use std::time::Instant;

use devices::mmds::{Mmds, MmdsVersion, answer_http};
use ember_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

fn check_response(bytes: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("not an HTTP response: {other:?}"),
    };
    let len: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .expect("a Content-Length");
    assert_eq!(
        bytes.len(),
        head + len,
        "Content-Length is not the body's length"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let mut mmds = Mmds::new(4096);
    let version = if flags & 1 != 0 {
        MmdsVersion::V2
    } else {
        MmdsVersion::V1
    };
    mmds.configure(version, flags & 2 != 0);
    mmds.put(serde_json::json!({ "latest": { "meta-data": { "id": "fuzz", "n": [1, 2] } } }))
        .expect("put MMDS data");
    let mut input = r.rest();
    let now = Instant::now();
    while let Some((consumed, response, close)) = answer_http(input, &mut mmds, now) {
        assert!(
            consumed > 0 && consumed <= input.len(),
            "consumed {consumed} of {}",
            input.len()
        );
        check_response(&response);
        input = &input[consumed..];
        if close {
            break;
        }
    }
});
