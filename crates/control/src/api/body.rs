//! Reading Atlas JSON request bodies strictly, with Atlas's error codes:
//! - not JSON, or not an object: `400 INVALID_JSON`;
//! - a known attribute of the wrong type: `400 INVALID_JSON_ATTRIBUTE` naming it;
//! - an attribute the resource does not have: `400 INVALID_ATTRIBUTE` naming it;
//! - a body over the configured limit: `413`.
//!
//! Handlers take [`JsonObject`] and pull fields out with [`Fields`], which remembers what was
//! read so that [`Fields::finish`] can reject whatever is left (unknown attributes) — we parse
//! by hand rather than with `#[derive(Deserialize)]` because serde's errors cannot say which
//! attribute was wrong in Atlas's terms, and because read-only attributes must be accepted and
//! ignored rather than rejected (Terraform sends them back).

use axum::extract::{FromRequest, Request};
use http::StatusCode;
use serde_json::{Map, Value};

use crate::error::{ApiError, codes};
use crate::state::AppState;

/// A request body that is a JSON object.
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        let bytes = read_limited(req.into_body(), limit).await?;
        parse_object(&bytes).map(JsonObject)
    }
}

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// gets the 413 instead of a broken pipe. Beyond this the connection is simply closed.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// Reads at most `limit` bytes of `body`. A larger body is refused with `413`, after the rest
/// of it (up to [`DRAIN_BYTES`]) has been read and dropped: answering while the client is still
/// writing makes hyper close the connection under it, and most clients then report a broken
/// pipe or an incomplete message instead of the error (hyper has no lingering close, so this is
/// done here by hand).
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("The request body is larger than {limit} bytes; nothing was changed. Send a smaller body."),
        )
    };
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        // A body that breaks off is as unusable as one that is too large; say which.
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if seen > limit => return Err(too_large()),
            Err(e) => {
                return Err(ApiError::bad_request(
                    codes::INVALID_JSON,
                    format!("The request body could not be read: {e}. Send it again."),
                ));
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
    }
    if seen > limit { Err(too_large()) } else { Ok(buf.freeze()) }
}

/// Parses bytes as a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            codes::INVALID_JSON,
            "Received JSON does not match expected format: the body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad_request(
            codes::INVALID_JSON,
            format!("Received JSON is malformed: {e} (line {}, column {}).", e.line(), e.column()),
        )),
    }
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> ApiError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::bad_request(
        codes::INVALID_JSON_ATTRIBUTE,
        format!(
            "Received JSON for the {path} attribute does not match expected format: expected {expected}, got {kind}."
        ),
    )
    .with_params([path])
    .with_field(path, format!("expected {expected}"))
}

/// Reads the attributes of one JSON object, tracking which were consumed.
pub struct Fields {
    prefix: String,
    map: Map<String, Value>,
}

impl Fields {
    /// `prefix` is the attribute path of this object in messages (`""` for the top level,
    /// `"azureKeyVault."` for a nested block).
    pub fn new(prefix: &str, map: Map<String, Value>) -> Fields {
        Fields { prefix: prefix.to_owned(), map }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A string attribute; `null` counts as absent.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(&self.path(name), "a string", &other)),
        }
    }

    /// A string attribute that may be left out but not sent as `null`: Atlas's schema does not
    /// make it nullable, and treating `null` as "unchanged" would silently keep a value the
    /// client meant to remove. `send` says what to send instead.
    pub fn string_not_null(&mut self, name: &str, send: &str) -> Result<Option<String>, ApiError> {
        if self.map.get(name).is_some_and(Value::is_null) {
            let path = self.path(name);
            return Err(ApiError::invalid_attribute(&path, format!("{path} cannot be null; {send}")));
        }
        self.string(name)
    }

    /// A boolean attribute; `null` counts as absent.
    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(wrong_type(&self.path(name), "a boolean", &other)),
        }
    }

    /// A nested object attribute; `null` counts as absent.
    pub fn object(&mut self, name: &str) -> Result<Option<Fields>, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Fields::new(&format!("{}.", self.path(name)), m))),
            Some(other) => Err(wrong_type(&self.path(name), "an object", &other)),
        }
    }

    /// Drops a read-only attribute the client may echo back (Terraform sends GET responses
    /// back in PATCH bodies); its value is ignored whatever it is.
    pub fn ignore(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// Takes an attribute's raw value, whatever its type.
    pub fn take_raw(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    /// Whether `name` is present (and not null).
    pub fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    /// Rejects any attribute not consumed.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(name) => {
                let path = self.path(name);
                Err(ApiError::bad_request(
                    codes::INVALID_ATTRIBUTE,
                    format!("Invalid attribute {path} specified: this resource has no such attribute."),
                )
                .with_params([path.clone()])
                .with_field(path, "unknown attribute"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        Fields::new("", v.as_object().unwrap().clone())
    }

    #[test]
    fn malformed_and_non_object_bodies_are_invalid_json() {
        assert_eq!(parse_object(b"{").unwrap_err().error_code, "INVALID_JSON");
        assert_eq!(parse_object(b"[1]").unwrap_err().error_code, "INVALID_JSON");
        assert_eq!(parse_object(b"").unwrap_err().error_code, "INVALID_JSON");
        assert!(parse_object(b"{}").is_ok());
    }

    #[test]
    fn wrong_types_name_the_attribute_path() {
        let mut f = fields(json!({"azureKeyVault": {"enabled": "yes"}}));
        let mut inner = f.object("azureKeyVault").unwrap().unwrap();
        let e = inner.boolean("enabled").unwrap_err();
        assert_eq!(e.error_code, "INVALID_JSON_ATTRIBUTE");
        assert_eq!(e.parameters, vec![json!("azureKeyVault.enabled")]);
        let mut f = fields(json!({"name": 5}));
        assert_eq!(f.string("name").unwrap_err().error_code, "INVALID_JSON_ATTRIBUTE");
    }

    #[test]
    fn unknown_attributes_are_rejected_and_ignored_ones_are_not() {
        let mut f = fields(json!({"name": "a", "valid": true, "bogus": 1}));
        assert_eq!(f.string("name").unwrap().as_deref(), Some("a"));
        f.ignore("valid");
        let e = f.finish().unwrap_err();
        assert_eq!(e.error_code, "INVALID_ATTRIBUTE");
        assert!(e.detail.contains("bogus"));
        let mut f = fields(json!({"name": null}));
        assert_eq!(f.string("name").unwrap(), None);
        assert!(f.finish().is_ok());
    }
}
