use std::time::Duration;

use serde_json::json;

use super::*;
use crate::mmds::MmdsVersion;

fn store(version: MmdsVersion) -> Mmds {
    let mut mmds = Mmds::default();
    mmds.put(json!({
        "age": 43,
        "name": {"first": "John", "second": "Doe"},
        "phones": {"home": {"RO": "+401234567"}, "mobile": "+442345678"}
    }))
    .unwrap();
    mmds.configure(version, false);
    mmds
}

/// The answer to `request`, which must be a whole request head.
fn ask(mmds: &mut Mmds, request: &str, now: Instant) -> Response {
    match handle(request.as_bytes(), mmds, now) {
        Parsed::Answer {
            consumed, response, ..
        } => {
            assert_eq!(consumed, request.len(), "{request}");
            response
        }
        Parsed::Incomplete => panic!("incomplete: {request}"),
    }
}

fn token(mmds: &mut Mmds, now: Instant) -> String {
    let r = ask(
        mmds,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        now,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn v1_gets_need_no_token_and_render_json_or_imds_as_accepted() {
    let mut mmds = store(MmdsVersion::V1);
    let now = Instant::now();
    let r = ask(&mut mmds, "GET / HTTP/1.0\r\n\r\n", now);
    assert_eq!((r.status, r.body.as_str()), (200, "age\nname/\nphones/"));
    let wire = String::from_utf8(r.to_bytes()).unwrap();
    assert!(wire.starts_with("HTTP/1.0 200 OK\r\n"), "{wire}");
    assert!(wire.contains("Content-Type: text/plain\r\n"), "{wire}");
    assert!(
        wire.ends_with("Content-Length: 17\r\n\r\nage\nname/\nphones/"),
        "{wire}"
    );
    // The absolute form, repeated slashes, Accept variants Firecracker ignores.
    for (req, body) in [
        (
            "GET http://169.254.169.254/name HTTP/1.1\r\n\r\n",
            "first\nsecond",
        ),
        ("GET //phones///home/RO HTTP/1.1\r\n\r\n", "+401234567"),
        (
            "GET /name/ HTTP/1.1\r\nAccept: */*\r\n\r\n",
            "first\nsecond",
        ),
        ("GET /name HTTP/1.1\r\nAccept:\r\n\r\n", "first\nsecond"),
        (
            "GET /name HTTP/1.1\nAccept: text/plain\n\n",
            "first\nsecond",
        ),
        (
            "GET /name HTTP/1.1\r\naccept: application/json\r\n\r\n",
            r#"{"first":"John","second":"Doe"}"#,
        ),
        (
            "GET /age HTTP/1.1\r\nAccept: application/json\r\n\r\n",
            "43",
        ),
    ] {
        let r = ask(&mut mmds, req, now);
        assert_eq!((r.status, r.body.as_str()), (200, body), "{req}");
    }
    let json = ask(
        &mut mmds,
        "GET /age HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        now,
    );
    assert!(
        String::from_utf8(json.to_bytes())
            .unwrap()
            .contains("Content-Type: application/json")
    );
    // V1 counts a missing or invalid token but serves anyway; a valid one is not counted.
    let t = token(&mut mmds, now);
    let r = ask(
        &mut mmds,
        &format!("GET /age HTTP/1.1\r\nX-metadata-token: {t}\r\nAccept: application/json\r\n\r\n"),
        now,
    );
    assert_eq!(r.status, 200);
    ask(
        &mut mmds,
        "GET / HTTP/1.1\r\nX-metadata-token: nope\r\n\r\n",
        now,
    );
    let m = mmds.metrics();
    assert_eq!((m.rx_no_token, m.rx_invalid_token), (9, 1));
}

#[test]
fn imds_compat_renders_text_whatever_is_accepted() {
    let mut mmds = store(MmdsVersion::V1);
    mmds.configure(MmdsVersion::V1, true);
    let r = ask(
        &mut mmds,
        "GET /name HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        Instant::now(),
    );
    assert_eq!((r.status, r.body.as_str()), (200, "first\nsecond"));
}

#[test]
fn v2_needs_a_live_token_from_put_latest_api_token() {
    let mut mmds = store(MmdsVersion::V2);
    let now = Instant::now();
    let r = ask(&mut mmds, "GET / HTTP/1.1\r\n\r\n", now);
    assert_eq!((r.status, r.body.as_str()), (401, NO_TOKEN));
    let r = ask(
        &mut mmds,
        "GET / HTTP/1.1\r\nX-metadata-token: bogus\r\n\r\n",
        now,
    );
    assert_eq!((r.status, r.body.as_str()), (401, INVALID_TOKEN));

    let put = ask(
        &mut mmds,
        "PUT http://169.254.169.254//latest/api/token HTTP/1.1\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: 5\r\n\r\n",
        now,
    );
    assert_eq!(put.status, 200);
    let wire = String::from_utf8(put.to_bytes()).unwrap();
    assert!(
        wire.contains("X-aws-ec2-metadata-token-ttl-seconds: 5\r\n"),
        "{wire}"
    );
    let t = put.body;
    for header in ["X-metadata-token", "x-aws-ec2-metadata-token"] {
        let req = format!("GET /phones/mobile HTTP/1.1\r\n{header}: {t}\r\n\r\n");
        let r = ask(&mut mmds, &req, now + Duration::from_millis(4999));
        assert_eq!((r.status, r.body.as_str()), (200, "+442345678"), "{header}");
        let r = ask(&mut mmds, &req, now + Duration::from_secs(5));
        assert_eq!((r.status, r.body.as_str()), (401, INVALID_TOKEN), "expired");
    }
    let m = mmds.metrics();
    assert_eq!((m.rx_no_token, m.rx_invalid_token), (1, 3));
}

#[test]
fn token_requests_are_refused_with_firecrackers_messages() {
    let mut mmds = store(MmdsVersion::V2);
    let now = Instant::now();
    for (req, status, body) in [
        (
            "PUT /latest/api/token HTTP/1.1\r\n\r\n",
            400,
            NO_TTL.to_string(),
        ),
        (
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: abc\r\n\r\n",
            400,
            "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:abc"
                .into(),
        ),
        (
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n",
            400,
            "Invalid time to live value provided for token: 0. Please provide a value between \
             1 and 21600."
                .into(),
        ),
        (
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
            400,
            "Invalid time to live value provided for token: 21601. Please provide a value \
             between 1 and 21600."
                .into(),
        ),
        (
            "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n\
             X-metadata-token-ttl-seconds: 60\r\n\r\n",
            400,
            "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For".into(),
        ),
        (
            "PUT /latest/api/other HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
            404,
            "Resource not found: /latest/api/other.".into(),
        ),
    ] {
        let r = ask(&mut mmds, req, now);
        assert_eq!(
            (r.status, r.body.as_str()),
            (status, body.as_str()),
            "{req}"
        );
    }
}

#[test]
fn lookups_and_methods_are_refused_with_firecrackers_codes() {
    let mut mmds = store(MmdsVersion::V1);
    let now = Instant::now();
    for (req, status, body) in [
        (
            "GET /invalid HTTP/1.1\r\n\r\n",
            404,
            "Resource not found: /invalid.",
        ),
        (
            "GET //invalid//x HTTP/1.1\r\n\r\n",
            404,
            "Resource not found: //invalid//x.",
        ),
        ("GET /age HTTP/1.1\r\n\r\n", 501, UNSUPPORTED_TYPE),
        (
            "GET http://169.254.169.254 HTTP/1.1\r\n\r\n",
            400,
            "Invalid URI.",
        ),
        ("GET age HTTP/1.1\r\n\r\n", 400, "Invalid URI."),
        ("PATCH / HTTP/1.1\r\n\r\n", 405, "Not allowed HTTP method."),
        ("DELETE / HTTP/1.1\r\n\r\n", 405, "Not allowed HTTP method."),
    ] {
        let r = ask(&mut mmds, req, now);
        assert_eq!((r.status, r.body.as_str()), (status, body), "{req}");
    }
    let r = ask(&mut mmds, "PATCH / HTTP/1.1\r\n\r\n", now);
    assert!(
        String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("Allow: GET, PUT\r\n")
    );
}

#[test]
fn malformed_requests_are_answered_and_close_the_connection() {
    let mut mmds = store(MmdsVersion::V1);
    let now = Instant::now();
    for (req, status, body) in [
        ("POST / HTTP/1.1\r\n\r\n", 501, "Unsupported HTTP method."),
        ("GET / HTTP/2.0\r\n\r\n", 501, "Unsupported HTTP version."),
        (
            "GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
            400,
            INVALID_REQUEST,
        ),
        (
            "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            400,
            "Invalid value. Key:Content-Length; Value:x",
        ),
        (
            "GET / HTTP/1.1\r\nAccept-Encoding: identity;q=0\r\n\r\n",
            400,
            "Invalid value. Key:Accept-Encoding; Value:identity;q=0",
        ),
        (
            "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            400,
            INVALID_REQUEST,
        ),
        ("garbage\r\n\r\n", 400, INVALID_REQUEST),
        ("\r\n\r\n", 400, INVALID_REQUEST),
    ] {
        match handle(req.as_bytes(), &mut mmds, now) {
            Parsed::Answer {
                response, close, ..
            } => {
                assert_eq!(
                    (response.status, response.body.as_str()),
                    (status, body),
                    "{req:?}"
                );
                assert!(close, "{req:?}");
            }
            Parsed::Incomplete => panic!("{req:?}"),
        }
    }
    // A header value that is not UTF-8.
    let Parsed::Answer { response, .. } =
        handle(b"GET / HTTP/1.1\r\nX: \x80\r\n\r\n", &mut mmds, now)
    else {
        panic!("no answer")
    };
    assert_eq!(
        (response.status, response.body.as_str()),
        (400, INVALID_REQUEST)
    );
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("H{i}: v\r\n"))
        .collect();
    let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert!(matches!(
        handle(req.as_bytes(), &mut mmds, now),
        Parsed::Answer { close: true, .. }
    ));
}

#[test]
fn a_partial_request_waits_and_one_too_large_is_answered_413() {
    let mut mmds = store(MmdsVersion::V1);
    let now = Instant::now();
    assert_eq!(
        handle(b"GET / HTTP/1.1\r\n", &mut mmds, now),
        Parsed::Incomplete
    );
    assert_eq!(handle(b"", &mut mmds, now), Parsed::Incomplete);
    // Two pipelined requests: the first is answered, its bytes consumed.
    let two = b"GET /name HTTP/1.1\r\n\r\nGET /age HTTP/1.1\r\n\r\n";
    let Parsed::Answer { consumed, .. } = handle(two, &mut mmds, now) else {
        panic!("no answer")
    };
    assert_eq!(consumed, 22);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_LEN));
    match handle(big.as_bytes(), &mut mmds, now) {
        Parsed::Answer {
            response, close, ..
        } => {
            assert_eq!(response.status, 413);
            assert!(response.body.contains("4096"), "{}", response.body);
            assert!(close);
        }
        Parsed::Incomplete => panic!("a request over the limit must be refused"),
    }
}

#[test]
fn any_bytes_get_an_answer_or_wait_never_a_panic() {
    let mut mmds = store(MmdsVersion::V2);
    let now = Instant::now();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| {
                let b = (seed >> (i % 56)) as u8;
                // Bias towards the bytes HTTP is made of.
                match b % 6 {
                    0 => b'\n',
                    1 => b'\r',
                    2 => b' ',
                    3 => b'/',
                    _ => b,
                }
            })
            .collect();
        let _ = handle(&bytes, &mut mmds, now);
    }
}
