//! The OCI distribution API client: manifests and blobs from a registry, with Docker Hub's
//! anonymous bearer tokens. HTTPS by default; plain HTTP only for localhost and the
//! registries named insecure. Every call has connect and read timeouts, so an unreachable or
//! stalled registry is an error, not a hang.

use std::io::Read;
use std::time::Duration;

use ureq::Agent;
use ureq::http::{Response, StatusCode, header};
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};

use crate::Error;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::manifest::{ACCEPTED, MAX_MANIFEST};
use crate::reference::{DOCKER_HUB, Reference};

/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any one read may wait (a stalled transfer ends after it).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// Most of an error body quoted in an error.
const MAX_ERROR_BODY: u64 = 4096;

/// A connection to one repository of one registry.
pub struct Registry {
    agent: Agent,
    /// `https://host[:port]` (or `http://`).
    base: String,
    repository: String,
    /// The registry as the user wrote it, for errors.
    name: String,
    token: Option<String>,
}

/// Whether `host` (`HOST[:PORT]`) is spoken to over plain HTTP: loopback always, others when
/// listed (a listed `HOST` without a port covers every port).
pub fn is_insecure(host: &str, insecure: &[String]) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
    ["localhost", "127.0.0.1", "::1"].contains(&bare)
        || insecure.iter().any(|i| i == host || i == bare)
}

impl Registry {
    /// A client for `reference`'s registry and repository.
    pub fn new(reference: &Reference, insecure: &[String]) -> Self {
        let host = reference.api_host();
        let scheme = if is_insecure(host, insecure) {
            "http"
        } else {
            "https"
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .user_agent(concat!("ember/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: Agent::new_with_config(config),
            base: format!("{scheme}://{host}"),
            repository: reference.repository.clone(),
            name: reference.registry.clone(),
            token: None,
        }
    }

    /// GETs `path` under `/v2/<repository>/`, fetching a token once if the registry asks for
    /// one. Any status but success is an error naming it.
    fn get(&mut self, path: &str, accept: &str) -> Result<Response<ureq::Body>, Error> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let mut retried = false;
        loop {
            let mut request = self.agent.get(&url).header(header::ACCEPT, accept);
            if let Some(token) = &self.token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let response = request.call().map_err(|e| self.unreachable(e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !retried {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                self.token = Some(self.fetch_token(&challenge)?);
                retried = true;
                continue;
            }
            if !status.is_success() {
                let mut body = response.into_body();
                let text = body
                    .with_config()
                    .limit(MAX_ERROR_BODY)
                    .read_to_string()
                    .unwrap_or_default();
                return Err(Error::RegistryStatus {
                    url,
                    status: status.as_u16(),
                    body: text.trim().chars().take(400).collect(),
                });
            }
            return Ok(response);
        }
    }

    fn unreachable(&self, source: ureq::Error) -> Error {
        let hint = if self.base.starts_with("https:") && self.name != DOCKER_HUB {
            format!(
                " (a registry served over plain HTTP needs --insecure-registry {})",
                self.name
            )
        } else {
            String::new()
        };
        Error::Unreachable {
            registry: self.name.clone(),
            hint,
            url: self.base.clone(),
            source: Box::new(source),
        }
    }

    /// Answers a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge with an
    /// anonymous token.
    fn fetch_token(&self, challenge: &str) -> Result<String, Error> {
        let denied = |why: &str| Error::AuthRequired {
            registry: self.name.clone(),
            why: why.into(),
        };
        let params = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
            .map(parse_challenge)
            .ok_or_else(|| denied("it asks for credentials, and ember pulls anonymously only"))?;
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let realm = param("realm").ok_or_else(|| denied("its token challenge names no realm"))?;
        let scope =
            param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut request = self.agent.get(&realm).query("scope", &scope);
        if let Some(service) = param("service") {
            request = request.query("service", &service);
        }
        let response = request.call().map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(denied(&format!(
                "its token service {realm} answered {}",
                response.status()
            )));
        }
        let body = response
            .into_body()
            .into_with_config()
            .limit(MAX_TOKEN_RESPONSE)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| denied("its token service answered something that is not a token"))?;
        parsed
            .token
            .or(parsed.access_token)
            .ok_or_else(|| denied("its token service answered no token"))
    }

    /// Fetches the manifest (or index) `reference` (a tag or digest): its bytes and digest.
    /// A manifest asked for by digest must have it.
    pub fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, Digest), Error> {
        let response = self.get(&format!("manifests/{reference}"), &ACCEPTED.join(", "))?;
        let bytes = response
            .into_body()
            .into_with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        let digest = Digest::of(&bytes);
        if reference.starts_with("sha256:") && digest.to_string() != reference {
            return Err(Error::DigestMismatch {
                expected: reference.into(),
                actual: digest.to_string(),
                size: bytes.len() as u64,
            });
        }
        Ok((bytes, digest))
    }

    /// Downloads blob `digest` of `size` bytes into the cache, verified.
    pub fn blob(&mut self, cache: &Cache, digest: &Digest, size: u64) -> Result<(), Error> {
        let response = self.get(&format!("blobs/{digest}"), "*/*")?;
        let reader = response.into_body().into_reader();
        cache
            .put_blob(digest, Some(size), reader.take(size.saturating_add(1)))
            .map(|_| ())
    }
}

/// `key="value",key=value,...` after `Bearer `; values may hold commas inside quotes.
fn parse_challenge(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, next)) => (v, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.push((key, value.to_string()));
        rest = next.trim_start_matches(',').trim();
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let params = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            params,
            [
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/alpine:pull,push".into()),
            ]
        );
        assert_eq!(parse_challenge("realm=x,service=y").len(), 2);
    }

    #[test]
    fn only_loopback_and_listed_registries_are_plain_http() {
        let listed = vec!["reg.lan:5000".to_string(), "other.lan".to_string()];
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.1:8080", &[]));
        assert!(is_insecure("[::1]:5000", &[]));
        assert!(is_insecure("reg.lan:5000", &listed));
        assert!(is_insecure("other.lan:1234", &listed));
        assert!(!is_insecure("reg.lan:5001", &listed));
        assert!(!is_insecure("registry-1.docker.io", &listed));
        assert!(!is_insecure("localhost.evil.com", &[]));
    }
}
