//! The MMDS data store: one JSON document with a size limit, the version and IMDS
//! compatibility the guest sees, the V2 session tokens, and the counters. What the API and
//! every interface's stack share (behind [`super::SharedMmds`]).

use std::io;
use std::time::Instant;

use serde_json::{Map, Value};

use super::token::{TokenError, Tokens};
use super::{DEFAULT_SIZE_LIMIT, MmdsMetrics, MmdsVersion};

/// Why the store refused a change; messages as the API answers them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmdsError {
    /// The new contents serialize to more bytes than the limit (the API answers 413).
    #[error(
        "The MMDS data store would be {size} bytes, over its limit of {limit} bytes: send less \
         metadata or start ember with a larger --mmds-size-limit."
    )]
    TooLarge {
        /// Bytes of the contents' JSON serialization.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A PATCH before any PUT (Firecracker refuses it too).
    #[error("The MMDS data store is not initialized: PUT /mmds before PATCH /mmds.")]
    NotInitialized,
}

/// Why a path cannot be rendered for the guest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RenderError {
    /// Nothing at that path.
    NotFound,
    /// IMDS format has no rendering for the value (only objects and strings have one).
    UnsupportedType,
}

/// The MMDS: data store, token authority, version and IMDS compatibility, and counters.
#[derive(Debug)]
pub struct Mmds {
    data: Value,
    initialized: bool,
    size_limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    tokens: Tokens,
    metrics: MmdsMetrics,
}

impl Default for Mmds {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE_LIMIT)
    }
}

impl Mmds {
    /// An empty store (JSON `null` until the first put) whose contents may serialize to at
    /// most `size_limit` bytes.
    pub fn new(size_limit: usize) -> Self {
        Self {
            data: Value::Null,
            initialized: false,
            size_limit,
            version: MmdsVersion::default(),
            imds_compat: false,
            tokens: Tokens::default(),
            metrics: MmdsMetrics::default(),
        }
    }

    /// Sets the version the guest must speak and whether answers are always IMDS-formatted
    /// (EC2 IMDS ignores the Accept header; `imds_compat` does the same).
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    /// The version the guest must speak.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Whether answers are IMDS-formatted whatever the guest accepts.
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// The size limit, in bytes of the contents' JSON serialization.
    pub fn size_limit(&self) -> usize {
        self.size_limit
    }

    /// Whether contents were ever put (a PATCH needs them).
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// Replaces the contents with `data`, which may be any JSON value (as Firecracker allows).
    pub fn put(&mut self, data: Value) -> Result<(), MmdsError> {
        self.check_size(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// Applies `patch` to the contents as a JSON merge patch (RFC 7396): objects merge key by
    /// key, `null` removes a key, anything else replaces. The contents are unchanged if the
    /// result would be over the limit.
    pub fn patch(&mut self, patch: Value) -> Result<(), MmdsError> {
        if !self.initialized {
            return Err(MmdsError::NotInitialized);
        }
        let mut patched = self.data.clone();
        merge_patch(&mut patched, &patch);
        self.check_size(&patched)?;
        self.data = patched;
        Ok(())
    }

    /// The contents, as `GET /mmds` returns them (`null` before the first put).
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The counters, totals over every interface.
    pub fn metrics(&self) -> MmdsMetrics {
        self.metrics
    }

    /// Adds an interface's counts since its last report.
    pub(crate) fn add_metrics(&mut self, delta: &MmdsMetrics) {
        self.metrics.add(delta);
    }

    /// Counts a GET without a token, or with one that is not valid.
    pub(crate) fn count_token_miss(&mut self, given: bool) {
        if given {
            self.metrics.rx_invalid_token += 1;
        } else {
            self.metrics.rx_no_token += 1;
        }
    }

    /// Issues a V2 session token that lives `ttl_seconds` from `now`.
    pub(crate) fn issue_token(
        &mut self,
        ttl_seconds: u32,
        now: Instant,
    ) -> Result<String, TokenError> {
        self.tokens.issue(ttl_seconds, now)
    }

    /// Whether `token` was issued by this store and has not expired at `now`.
    pub(crate) fn token_is_valid(&self, token: &str, now: Instant) -> bool {
        self.tokens.is_valid(token, now)
    }

    fn check_size(&self, data: &Value) -> Result<(), MmdsError> {
        let size = serialized_len(data);
        if size > self.size_limit {
            return Err(MmdsError::TooLarge {
                size,
                limit: self.size_limit,
            });
        }
        Ok(())
    }

    /// The value at JSON pointer `path` (a trailing `/` is allowed), rendered as JSON or, if
    /// `imds` or the store is IMDS-compatible, in IMDS format: an object as its keys one per
    /// line (a `/` after those holding objects), a string as itself, nothing else.
    pub(crate) fn render(&self, path: &str, imds: bool) -> Result<String, RenderError> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = self.data.pointer(pointer).ok_or(RenderError::NotFound)?;
        if !imds && !self.imds_compat {
            return Ok(value.to_string());
        }
        match value {
            Value::Object(map) => Ok(map
                .iter()
                .map(|(key, v)| {
                    if v.is_object() {
                        format!("{key}/")
                    } else {
                        key.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")),
            Value::String(s) => Ok(s.clone()),
            _ => Err(RenderError::UnsupportedType),
        }
    }
}

/// RFC 7396 merge patch of `target` with `patch`.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in changes {
            if value.is_null() {
                doc.remove(key);
            } else {
                merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Bytes of `value`'s compact JSON serialization, counted without building it.
fn serialized_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `Value` fails only if the writer does, and this one never does; were it
    // to, the count would be short and the limit still checked against what was seen.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "name": {"first": "John", "second": "Doe"},
            "age": 43,
            "phones": ["+401234567", "+441234567"],
            "member": false,
            "shares": 12.12,
            "json_string": "{\n  \"hello\": \"world\"\n}",
            "nothing": null
        })
    }

    #[test]
    fn put_replaces_and_patch_merges_per_rfc_7396() {
        let mut mmds = Mmds::default();
        assert_eq!(mmds.data(), &Value::Null);
        assert_eq!(
            mmds.patch(json!({"a": 1})),
            Err(MmdsError::NotInitialized),
            "Firecracker refuses a patch before a put"
        );
        mmds.put(json!({"meta-data": {"iam": "dummy", "x": 1}, "user-data": "15"}))
            .unwrap();
        mmds.patch(
            json!({"user-data": "10", "meta-data": {"x": null, "y": [1]}, "new": {"k": "v"}}),
        )
        .unwrap();
        assert_eq!(
            mmds.data(),
            &json!({"meta-data": {"iam": "dummy", "y": [1]}, "user-data": "10", "new": {"k": "v"}})
        );
        // A non-object patch replaces the whole document; a put may hold any value.
        mmds.patch(json!("plain")).unwrap();
        assert_eq!(mmds.data(), &json!("plain"));
        mmds.put(json!([1, 2])).unwrap();
        assert_eq!(mmds.data(), &json!([1, 2]));
        mmds.patch(json!({"a": {"b": "c"}})).unwrap();
        assert_eq!(mmds.data(), &json!({"a": {"b": "c"}}));
    }

    #[test]
    fn the_size_limit_counts_serialized_bytes_and_a_refused_change_changes_nothing() {
        let mut mmds = Mmds::new(20);
        // {"k":"1234567890123"} is exactly 21 bytes; one less fits.
        let err = mmds.put(json!({"k": "1234567890123"})).unwrap_err();
        assert_eq!(
            err,
            MmdsError::TooLarge {
                size: 21,
                limit: 20
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("20 bytes") && msg.contains("--mmds-size-limit"),
            "{msg}"
        );
        assert!(!mmds.is_initialized());
        mmds.put(json!({"k": "123456789012"})).unwrap();
        assert_eq!(
            mmds.patch(json!({"j": "x"})),
            Err(MmdsError::TooLarge {
                size: 28,
                limit: 20
            })
        );
        assert_eq!(mmds.data(), &json!({"k": "123456789012"}));
        // A patch that shrinks the document is fine.
        mmds.patch(json!({"k": "1"})).unwrap();
        assert_eq!(serialized_len(mmds.data()), 9);
    }

    #[test]
    fn json_rendering_follows_pointers_with_or_without_a_trailing_slash() {
        let mut mmds = Mmds::default();
        mmds.put(sample()).unwrap();
        let json = |p: &str| mmds.render(p, false);
        assert_eq!(json("/name").unwrap(), r#"{"first":"John","second":"Doe"}"#);
        assert_eq!(
            json("/name/").unwrap(),
            r#"{"first":"John","second":"Doe"}"#
        );
        assert_eq!(json("/age").unwrap(), "43");
        assert_eq!(json("/phones").unwrap(), r#"["+401234567","+441234567"]"#);
        assert_eq!(json("/phones/0/").unwrap(), r#""+401234567""#);
        assert_eq!(json("/member").unwrap(), "false");
        assert_eq!(json("/shares").unwrap(), "12.12");
        assert_eq!(json("/nothing").unwrap(), "null");
        assert_eq!(
            json("/json_string").unwrap(),
            r#""{\n  \"hello\": \"world\"\n}""#
        );
        assert_eq!(json("/invalid"), Err(RenderError::NotFound));
        assert_eq!(json("/phones/7"), Err(RenderError::NotFound));
        assert!(json("/").unwrap().starts_with('{'), "the root");
    }

    #[test]
    fn imds_rendering_lists_keys_gives_strings_and_refuses_other_types() {
        for compat in [false, true] {
            let mut mmds = Mmds::default();
            mmds.put(sample()).unwrap();
            mmds.configure(MmdsVersion::V1, compat);
            // With imds_compat the Accept header (the `imds` flag) does not matter.
            let accepts: &[bool] = if compat { &[true, false] } else { &[true] };
            for &imds in accepts {
                let r = |p: &str| mmds.render(p, imds);
                assert_eq!(r("/name").unwrap(), "first\nsecond");
                assert_eq!(
                    r("/").unwrap(),
                    "age\njson_string\nmember\nname/\nnothing\nphones\nshares"
                );
                assert_eq!(r("/phones/0").unwrap(), "+401234567");
                assert_eq!(r("/json_string").unwrap(), "{\n  \"hello\": \"world\"\n}");
                for p in [
                    "/age", "/phones", "/phones/", "/member", "/shares", "/nothing",
                ] {
                    assert_eq!(r(p), Err(RenderError::UnsupportedType), "{p}");
                }
                assert_eq!(r("/invalid"), Err(RenderError::NotFound));
            }
        }
    }

    #[test]
    fn configure_sets_version_and_compat() {
        let mut mmds = Mmds::default();
        assert_eq!(
            (mmds.version(), mmds.imds_compat()),
            (MmdsVersion::V1, false)
        );
        mmds.configure(MmdsVersion::V2, true);
        assert_eq!(
            (mmds.version(), mmds.imds_compat()),
            (MmdsVersion::V2, true)
        );
        assert_eq!(MmdsVersion::V2.to_string(), "V2");
        assert_eq!(mmds.size_limit(), DEFAULT_SIZE_LIMIT);
    }
}
