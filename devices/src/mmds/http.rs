//! The MMDS's HTTP answers, as Firecracker gives them: the request head is parsed with
//! `httparse` and held to what Firecracker's HTTP library accepts (GET, PUT, PATCH, DELETE;
//! HTTP/1.0 and 1.1; no body), then served from the store:
//!
//! - `GET <path>`: the value at the JSON pointer `path` (repeated `/` collapse), as JSON if
//!   the request says `Accept: application/json` and the store is not IMDS-compatible, else
//!   in IMDS format. 404 for no such path, 501 for a value IMDS cannot render. V2 needs a valid
//!   token (`X-metadata-token` or `X-aws-ec2-metadata-token`), else 401; V1 counts a missing or
//!   invalid one but serves anyway.
//! - `PUT /latest/api/token` with `X-metadata-token-ttl-seconds` (or the
//!   `X-aws-ec2-metadata-token-ttl-seconds` alias), 1 to 21600: a new token, 200, the TTL
//!   header echoed. A PUT carrying `X-Forwarded-For` is refused (a proxied request must not
//!   get a token), as is any other PUT path (404).
//! - Other methods: 405 with `Allow: GET, PUT`; unknown methods and versions: 501.

use std::time::Instant;

use super::MAX_REQUEST_LEN;
use super::store::{Mmds, RenderError};

/// Where a token is asked for.
const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
/// Headers a request may carry; more is a bad request.
const MAX_HEADERS: usize = 64;
/// Tokens longer than this are not looked up (a token is 64 hex digits).
const TOKEN_LENGTH_LIMIT: usize = 70;

const NO_TOKEN: &str = "No MMDS token provided. Use `X-metadata-token` or \
    `X-aws-ec2-metadata-token` header to specify the session token.";
const NO_TTL: &str = "Token time to live value not found. Use `X-metadata-token-ttl-seconds` \
    or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.";
const INVALID_TOKEN: &str = "MMDS token not valid.";
const UNSUPPORTED_TYPE: &str = "Cannot retrieve value. The value has an unsupported type.";
const INVALID_REQUEST: &str = "Invalid request.";

/// An answer to write back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// HTTP/1.0 or HTTP/1.1, as the request asked (1.1 when it could not be parsed).
    http10: bool,
    json: bool,
    pub(crate) body: String,
    /// `Allow: GET, PUT` (405 answers).
    allow: bool,
    /// A header echoed back (the token's TTL).
    extra: Option<(String, String)>,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            http10: false,
            json: false,
            body: body.into(),
            allow: false,
            extra: None,
        }
    }

    /// The bytes on the wire.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            501 => "Not Implemented",
            _ => "",
        };
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut head = format!(
            "{version} {} {reason}\r\nServer: ember\r\nConnection: keep-alive\r\n",
            self.status
        );
        if self.allow {
            head.push_str("Allow: GET, PUT\r\n");
        }
        if let Some((name, value)) = &self.extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let content_type = if self.json {
            "application/json"
        } else {
            "text/plain"
        };
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not a whole request head yet.
    Incomplete,
    /// A request head of `consumed` bytes and its answer; `close` when the connection cannot
    /// go on (the request was malformed, or too large to be read).
    Answer {
        consumed: usize,
        response: Response,
        close: bool,
    },
}

/// Looks for a request at the start of `buf` and answers it from `mmds` at time `now`.
pub(crate) fn handle(buf: &[u8], mmds: &mut Mmds, now: Instant) -> Parsed {
    let Some(end) = head_end(buf) else {
        if buf.len() >= MAX_REQUEST_LEN {
            return Parsed::Answer {
                consumed: buf.len(),
                response: Response::new(
                    413,
                    format!(
                        "Request too large: a request to the MMDS may have at most \
                         {MAX_REQUEST_LEN} bytes of request line and headers."
                    ),
                ),
                close: true,
            };
        }
        return Parsed::Incomplete;
    };
    let (response, close) = match parse(&buf[..end]) {
        Ok(request) => (answer(&request, mmds, now), false),
        Err(response) => (response, true),
    };
    Parsed::Answer {
        consumed: end,
        response,
        close,
    }
}

/// Whether `buf` starts with a whole request head.
pub(crate) fn head_complete(buf: &[u8]) -> bool {
    head_end(buf).is_some()
}

/// The end of the request head: just past the first empty line (Firecracker's rule: a `\n`
/// followed by `\n` or `\r\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match &buf[i + 1..] {
            [b'\n', ..] => Some(i + 2),
            [b'\r', b'\n', ..] => Some(i + 3),
            _ => None,
        }
    })
}

/// What the answer depends on in a request.
#[derive(Debug)]
struct Request {
    method: Method,
    http10: bool,
    /// The absolute path as sent (for messages).
    path: String,
    accept_json: bool,
    /// Headers the HTTP library does not interpret, names as sent.
    custom: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Patch,
    Delete,
}

impl Request {
    /// The last header named (case-insensitively) any of `names`, as sent.
    fn header(&self, names: &[&str]) -> Option<&(String, String)> {
        self.custom
            .iter()
            .rev()
            .find(|(name, _)| names.iter().any(|n| name.eq_ignore_ascii_case(n)))
    }
}

/// Parses a request head, or gives the answer that refuses it.
fn parse(head: &[u8]) -> Result<Request, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::Version) => {
            return Err(Response::new(501, "Unsupported HTTP version."));
        }
        Ok(httparse::Status::Partial) | Err(_) => return Err(Response::new(400, INVALID_REQUEST)),
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        _ => return Err(Response::new(501, "Unsupported HTTP method.")),
    };
    let http10 = req.version == Some(0);
    let path = abs_path(req.path.unwrap_or_default()).to_string();
    let mut request = Request {
        method,
        http10,
        path,
        accept_json: false,
        custom: Vec::new(),
    };
    for h in req.headers.iter() {
        let bad_value = || {
            Response::new(
                400,
                format!(
                    "Invalid value. Key:{}; Value:{}",
                    h.name,
                    String::from_utf8_lossy(h.value)
                ),
            )
        };
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(Response::new(400, INVALID_REQUEST));
        };
        let value = value.trim();
        match h.name.to_ascii_lowercase().as_str() {
            // A request to the MMDS carries no body; the HTTP library refuses one.
            "content-length" => match value.parse::<u32>() {
                Ok(0) => {}
                Ok(_) => return Err(Response::new(400, INVALID_REQUEST)),
                Err(_) => return Err(bad_value()),
            },
            // Anything but exactly these two leaves the default, plain text.
            "accept" => match value {
                "application/json" => request.accept_json = true,
                "text/plain" => request.accept_json = false,
                _ => {}
            },
            "accept-encoding" => {
                let refuses_identity = value.split(',').map(str::trim).any(|enc| {
                    enc == "identity;q=0" || (enc == "*;q=0" && !value.contains("identity"))
                });
                if value.is_empty() {
                    return Err(Response::new(400, INVALID_REQUEST));
                }
                if refuses_identity {
                    return Err(bad_value());
                }
            }
            "content-type" | "expect" | "transfer-encoding" | "server" => {}
            _ => request.custom.push((h.name.to_string(), value.to_string())),
        }
    }
    Ok(request)
}

/// The absolute path of a request target: `/...` as is, `http://host/...` without scheme and
/// host, anything else empty.
fn abs_path(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix("http://") {
        return rest.find('/').map_or("", |at| &rest[at..]);
    }
    if target.starts_with('/') { target } else { "" }
}

/// The JSON pointer a path names: repeated slashes collapse into one.
fn json_pointer(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Serves a parsed request.
fn answer(request: &Request, mmds: &mut Mmds, now: Instant) -> Response {
    let mut response = if request.path.is_empty() {
        Response::new(400, "Invalid URI.")
    } else {
        match request.method {
            Method::Get => get(request, mmds, now),
            Method::Put => put_token(request, mmds, now),
            Method::Patch | Method::Delete => {
                let mut r = Response::new(405, "Not allowed HTTP method.");
                r.allow = true;
                r
            }
        }
    };
    response.http10 = request.http10;
    response
}

fn get(request: &Request, mmds: &mut Mmds, now: Instant) -> Response {
    let token = request.header(&TOKEN_HEADERS).map(|(_, v)| v.as_str());
    let valid = token.is_some_and(|t| t.len() <= TOKEN_LENGTH_LIMIT && mmds.token_is_valid(t, now));
    if !valid {
        mmds.count_token_miss(token.is_some());
        if mmds.version() == super::MmdsVersion::V2 {
            return Response::new(
                401,
                if token.is_some() {
                    INVALID_TOKEN
                } else {
                    NO_TOKEN
                },
            );
        }
    }
    match mmds.render(&json_pointer(&request.path), !request.accept_json) {
        Ok(body) => {
            let mut r = Response::new(200, body);
            // The answer is labelled as asked for, even when IMDS compatibility renders it
            // as text (Firecracker does the same).
            r.json = request.accept_json;
            r
        }
        Err(RenderError::NotFound) => {
            Response::new(404, format!("Resource not found: {}.", request.path))
        }
        Err(RenderError::UnsupportedType) => Response::new(501, UNSUPPORTED_TYPE),
    }
}

fn put_token(request: &Request, mmds: &mut Mmds, now: Instant) -> Response {
    if let Some((name, _)) = request.header(&["x-forwarded-for"]) {
        return Response::new(
            400,
            format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
        );
    }
    if json_pointer(&request.path) != TOKEN_PATH {
        return Response::new(404, format!("Resource not found: {}.", request.path));
    }
    let Some((name, value)) = request.header(&TTL_HEADERS) else {
        return Response::new(400, NO_TTL);
    };
    let Ok(ttl) = value.parse::<u32>() else {
        return Response::new(
            400,
            format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
        );
    };
    match mmds.issue_token(ttl, now) {
        Ok(token) => {
            let mut r = Response::new(200, token);
            r.extra = Some((name.clone(), ttl.to_string()));
            r
        }
        Err(err) => Response::new(400, err.to_string()),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
