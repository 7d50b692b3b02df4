//! Holds ember to its published API contract, `api_server/openapi.json`: every request an API
//! test makes through [`super::ApiClient`] and the answer it gets are checked against it.
//!
//! - A request to a path and method the document does not list must get a 400 with an Error.
//! - Every answer's status must be one the operation lists, with a body of that schema (none
//!   for 204).
//! - An accepted (2xx) request must conform: its path ids, and its body (present exactly when
//!   the operation takes one). So a request the document calls invalid is never accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

/// The parsed document and the validators built from it so far.
pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The document, parsed once per test binary.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| Spec {
        doc: serde_json::from_str(include_str!("../../api_server/openapi.json"))
            .expect("api_server/openapi.json is not JSON"),
        validators: Mutex::new(HashMap::new()),
    })
}

/// The operation `template` describes matches `path`: literal segments equal, `{name}` any
/// non-empty segment. Returns the template's parameters and their values.
fn matches(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (t, p) in t.iter().zip(&p) {
        match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) if !p.is_empty() => params.push((name.to_owned(), (*p).to_owned())),
            Some(_) => return None,
            None if t == p => {}
            None => return None,
        }
    }
    Some(params)
}

impl Spec {
    /// Follows a local `$ref` (`#/components/...`), once.
    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("openapi.json: dangling $ref {r}")),
            None => node,
        }
    }

    /// Validates `instance` against `schema`, whose references point into the document.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let key = schema.to_string();
        let validator = {
            let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .entry(key)
                .or_insert_with(|| {
                    let mut root = json!({"components": self.doc["components"]});
                    if let (Some(root), Some(schema)) = (root.as_object_mut(), schema.as_object()) {
                        root.extend(schema.clone());
                    }
                    Arc::new(
                        jsonschema::validator_for(&root)
                            .unwrap_or_else(|e| panic!("openapi.json: bad schema {schema}: {e}")),
                    )
                })
                .clone()
        };
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{e} at '{}'", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The JSON schema of `holder`'s `application/json` content, if it has content.
    fn content_schema<'a>(&'a self, holder: &'a Value) -> Option<&'a Value> {
        self.resolve(holder)
            .get("content")
            .map(|c| &c["application/json"]["schema"])
    }

    /// Checks one exchange; the error says what breaks the contract.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        status: u16,
        answer: &str,
    ) -> Result<(), String> {
        let paths = self.doc["paths"]
            .as_object()
            .expect("openapi.json: no paths");
        let found = paths.iter().find_map(|(template, item)| {
            let op = item.get(method.to_ascii_lowercase())?;
            matches(template, path).map(|params| (item, op, params))
        });
        let Some((item, op, params)) = found else {
            if status != 400 {
                return Err(format!("undocumented, yet answered {status}"));
            }
            let error = json!({"$ref": "#/components/schemas/Error"});
            return self.validate(&error, &parse(answer)?);
        };
        let response = op["responses"]
            .get(status.to_string())
            .ok_or_else(|| format!("status {status} is not documented"))?;
        match self.content_schema(response) {
            Some(schema) => self.validate(schema, &parse(answer)?)?,
            None if answer.is_empty() => {}
            None => return Err(format!("{status} must have no body, got {answer}")),
        }
        if !(200..300).contains(&status) {
            return Ok(());
        }
        let declared = item["parameters"].as_array().into_iter().flatten();
        for param in declared.map(|p| self.resolve(p)) {
            let name = param["name"].as_str().unwrap_or_default();
            let value = params.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let value = value.ok_or_else(|| format!("path parameter {name} is missing"))?;
            self.validate(&param["schema"], &json!(value))
                .map_err(|e| format!("accepted an invalid {name}: {e}"))?;
        }
        match (op.get("requestBody"), body) {
            (Some(request), Some(body)) => {
                let schema = self
                    .content_schema(request)
                    .ok_or("openapi.json: a requestBody without content")?;
                self.validate(schema, &parse(body)?)
                    .map_err(|e| format!("accepted a body the document forbids: {e}"))
            }
            (Some(_), None) => Err("accepted a request without its body".into()),
            (None, Some(body)) if !body.is_empty() => {
                Err("accepted a body the operation does not take".into())
            }
            (None, _) => Ok(()),
        }
    }
}

fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))
}
