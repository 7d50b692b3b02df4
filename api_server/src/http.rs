//! HTTP/1.1 framing for the API: parsing requests out of a connection's byte stream (httparse)
//! and writing responses. Only what Firecracker's API uses: Content-Length bodies (chunked
//! bodies are refused), keep-alive, pipelining. Every failure becomes a [`HttpError`] that the
//! server answers with a 400 and a `fault_message`, then closes the connection, since the rest
//! of its stream cannot be trusted.

use crate::request::Fault;

/// Most headers a request may carry.
const MAX_HEADERS: usize = 32;
/// Largest request head (request line and headers).
pub const MAX_HEAD_LEN: usize = 8192;

/// Errors in a request's framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP, or not well-formed.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head is larger than ember accepts.
    #[error("the request head is larger than {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// The body is larger than `--http-api-max-payload-size`.
    #[error(
        "Request payload with size {size} is larger than the limit of {limit} allowed by server."
    )]
    PayloadTooLarge {
        /// The declared size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Chunked transfer encoding.
    #[error("chunked request bodies are not supported; send the body with a Content-Length")]
    Chunked,
    /// No HTTP version in the request line.
    #[error("unsupported HTTP version")]
    Version,
}

/// A request method ember knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// Any other method, kept for the error message.
    Other,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The method as sent.
    pub method_name: String,
    /// The path, without a query string.
    pub path: String,
    /// The body (empty without one).
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

/// Parses the first request in `buf`: `Ok(None)` if it is not complete yet, otherwise the
/// request and the number of bytes it took.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_LEN => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD_LEN {
        return Err(HttpError::HeadTooLarge);
    }
    let version = req.version.ok_or(HttpError::Version)?;
    let method_name = req.method.unwrap_or_default().to_owned();
    let method = match method_name.as_str() {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        _ => Method::Other,
    };
    let raw_path = req.path.unwrap_or_default();
    let path = raw_path.split('?').next().unwrap_or_default().to_owned();
    let mut content_length = None;
    let mut close = version == 0;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            // Two lengths leave the body's end ambiguous, and a proxy in front of ember may pick
            // the other one (request smuggling): refuse rather than choose.
            if content_length.is_some() {
                return Err(HttpError::Malformed(
                    "more than one Content-Length header".into(),
                ));
            }
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Malformed(format!("bad Content-Length '{value}'")))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        }
    }
    let content_length: usize = content_length.unwrap_or(0);
    if content_length > max_payload {
        return Err(HttpError::PayloadTooLarge {
            size: content_length,
            limit: max_payload,
        });
    }
    // The limit comes from the command line and may be anything, up to usize::MAX.
    let total = head_len
        .checked_add(content_length)
        .ok_or(HttpError::PayloadTooLarge {
            size: content_length,
            limit: max_payload,
        })?;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Request {
            method,
            method_name,
            path,
            body: buf[head_len..total].to_vec(),
            close,
        },
        total,
    )))
}

/// A response: a status and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// 200, 204, 400 or 413.
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            body: Some(body),
        }
    }

    /// 400 with `{"fault_message": message}`.
    pub fn fault(message: &str) -> Self {
        Self::refused(&Fault::BadRequest(message.into()))
    }

    /// The VMM's refusal: its status, with `{"fault_message": ...}`.
    pub fn refused(fault: &Fault) -> Self {
        let body = serde_json::json!({ "fault_message": fault.message() }).to_string();
        Self {
            status: fault.status(),
            body: Some(body),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            413 => "Payload Too Large",
            _ => "Bad Request",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\nServer: ember\r\n", self.status);
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &str) -> Request {
        let (req, used) = parse(raw.as_bytes(), 100).unwrap().unwrap();
        assert_eq!(used, raw.len());
        req
    }

    #[test]
    fn requests_with_and_without_bodies() {
        let r = one("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(
            (r.method, r.path.as_str(), r.body.len(), r.close),
            (Method::Get, "/", 0, false)
        );
        let r = one("PUT /drives/rootfs?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(
            (r.method, r.path.as_str(), r.body.as_slice()),
            (Method::Put, "/drives/rootfs", &b"{}"[..])
        );
        let r = one("DELETE /x HTTP/1.0\r\n\r\n");
        assert_eq!(
            (r.method, r.method_name.as_str(), r.close),
            (Method::Other, "DELETE", true)
        );
        assert!(one("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").close);
    }

    #[test]
    fn partial_and_pipelined_input() {
        let two = "GET / HTTP/1.1\r\n\r\nPUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..18 {
            assert_eq!(parse(&two.as_bytes()[..cut], 100), Ok(None), "{cut}");
        }
        let (_, used) = parse(two.as_bytes(), 100).unwrap().unwrap();
        assert_eq!(used, 18);
        let rest = &two.as_bytes()[used..];
        assert_eq!(parse(&rest[..rest.len() - 1], 100), Ok(None));
        assert_eq!(parse(rest, 100).unwrap().unwrap().0.body, b"abc");
    }

    #[test]
    fn bad_framing_is_refused() {
        let err = |raw: &[u8]| parse(raw, 100).unwrap_err();
        assert!(matches!(
            err(b"\x00\x01\x02garbage\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::Chunked
        );
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            HttpError::PayloadTooLarge {
                size: 101,
                limit: 100
            }
        );
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_LEN + 1));
        assert_eq!(err(huge.as_bytes()), HttpError::HeadTooLarge);
    }

    #[test]
    fn two_content_lengths_are_refused() {
        for raw in [
            "PUT /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 0\r\n\r\nabc",
            "PUT /a HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
        ] {
            assert_eq!(
                parse(raw.as_bytes(), 100),
                Err(HttpError::Malformed(
                    "more than one Content-Length header".into()
                )),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_length_that_overflows_is_refused_even_without_a_limit() {
        let huge = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX);
        assert!(matches!(
            parse(huge.as_bytes(), usize::MAX),
            Err(HttpError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn responses_are_framed() {
        assert_eq!(
            Response::no_content().to_bytes(),
            b"HTTP/1.1 204 No Content\r\nServer: ember\r\n\r\n"
        );
        let fault = String::from_utf8(Response::fault("bad \"x\"").to_bytes()).unwrap();
        assert!(fault.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(fault.ends_with("\r\n\r\n{\"fault_message\":\"bad \\\"x\\\"\"}"));
        assert!(fault.contains("Content-Length: 29\r\n"));
        let full = Response::refused(&Fault::PayloadTooLarge("over".into())).to_bytes();
        let full = String::from_utf8(full).unwrap();
        assert!(
            full.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{full}"
        );
        assert!(full.ends_with("{\"fault_message\":\"over\"}"), "{full}");
    }
}
