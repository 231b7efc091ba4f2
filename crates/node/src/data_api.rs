//! The embedded engine's data API (docs/design/node-api-draft.md, "Data API"): JSON documents
//! in collections, over HTTP, authenticated by a cluster data credential.
//!
//! Every call first proves the credential (SHA-256 against the hashes the control plane
//! sends), then asks the node's [`Gate`] whether it serves. While it does not, the answer is
//! 503 with the reason and the exact fix; the engine also refuses by itself once closed, so a
//! call racing a shutdown is refused too. Errors use the Atlas `ApiError` body plus `fix`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::sqlcipher::{BatchOp, BatchResult, SqlCipherEngine};
use crate::engine::{Engine, EngineError};
use crate::runtime::{Gate, NodeState};

/// The largest document, in bytes of JSON.
pub const MAX_DOCUMENT: usize = 1024 * 1024;
/// The most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1000;
const MAX_BATCH_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Api {
    gate: Arc<Gate>,
    engine: Arc<SqlCipherEngine>,
}

#[derive(Clone)]
struct StatusApi {
    gate: Arc<Gate>,
    engine: Arc<dyn Engine>,
}

/// A refusal, in the Atlas error shape.
struct DataError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    fix: Option<String>,
    parameters: Vec<String>,
}

impl DataError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), fix: None, parameters: Vec::new() }
    }

    fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ATTRIBUTE",
            format!("Invalid attribute {field} specified: {why}"),
        );
        e.parameters = vec![field.to_string()];
        e
    }
}

impl IntoResponse for DataError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "error": self.status.as_u16(),
            "errorCode": self.code,
            "detail": self.detail,
            "reason": self.status.canonical_reason().unwrap_or(""),
            "parameters": self.parameters,
        });
        if let Some(fix) = self.fix {
            body["fix"] = fix.into();
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"atrest data\""));
        }
        resp
    }
}

type Result<T> = std::result::Result<T, DataError>;

/// The data API of one embedded-engine node: documents, plus [`status_router`]'s routes.
pub fn router(gate: Arc<Gate>, engine: Arc<SqlCipherEngine>) -> Router {
    let described: Arc<dyn Engine> = engine.clone();
    Router::new()
        .route("/v1/collections/{collection}/documents", get(list))
        .route("/v1/collections/{collection}/documents/{id}", get(get_doc).put(put_doc).delete(delete_doc))
        .route("/v1/batch", post(batch))
        .with_state(Api { gate: gate.clone(), engine })
        .merge(status_routes(gate, described))
        .fallback(unknown_path)
}

/// The routes every node serves whatever its engine: `/healthz` and `/v1/status` (the node's
/// state and its engine's description). A MariaDB node serves only these: its clients speak
/// MariaDB's protocol to mariadbd.
pub fn status_router(gate: Arc<Gate>, engine: Arc<dyn Engine>) -> Router {
    status_routes(gate, engine).fallback(unknown_path)
}

fn status_routes(gate: Arc<Gate>, engine: Arc<dyn Engine>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .with_state(StatusApi { gate, engine })
}

async fn unknown_path() -> DataError {
    DataError::new(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        "no such data API path: see docs/design/node-api-draft.md, \"Data API\"",
    )
}

/// The credential check, then the state check.
fn admit(gate: &Gate, headers: &HeaderMap) -> Result<()> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => {
            return Err(DataError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send a data credential: Authorization: Bearer atrd_... (issue one with `atrest admin create-data-credential --group <groupId> --cluster <name>`)",
            ));
        }
        Some(c) if !gate.accepts(c) => {
            // Before the first configuration the node knows no credential at all: say that
            // rather than "wrong credential".
            if !gate.status().state.serves() {
                return Err(not_serving(gate));
            }
            return Err(DataError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_DATA_CREDENTIAL",
                "this data credential is not one of the cluster's (revoked, or for another cluster): issue one with `atrest admin create-data-credential`",
            ));
        }
        Some(_) => {}
    }
    if gate.status().state.serves() { Ok(()) } else { Err(not_serving(gate)) }
}

fn not_serving(gate: &Gate) -> DataError {
    let s = gate.status();
    let (code, what) = match s.state {
        NodeState::ShutDown => {
            ("NODE_SHUT_DOWN", "this node shut down: access to the customer's Key Vault key was denied")
        }
        _ => ("NODE_LOCKED", "this node has no key yet (it is locked)"),
    };
    let mut e = DataError::new(StatusCode::SERVICE_UNAVAILABLE, code, what.to_string());
    if let Some(err) = s.last_error {
        e.detail = format!("{what}: {}", err.message);
        if let Some(c) = err.azure_code {
            e.parameters.push(c);
        }
        e.fix = err.fix;
    }
    if e.fix.is_none() {
        e.fix = Some("restore the platform's access to the key in Azure; the node checks again within its check interval and serves again by itself".into());
    }
    e
}

impl Api {
    fn admit(&self, headers: &HeaderMap) -> Result<()> {
        admit(&self.gate, headers)
    }
    /// Runs a blocking engine call; a closed engine is a shutdown in progress.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqlCipherEngine) -> std::result::Result<T, EngineError> + Send + 'static,
    ) -> Result<T> {
        let engine = self.engine.clone();
        let out = tokio::task::spawn_blocking(move || f(&engine)).await.map_err(|_| {
            DataError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "the engine call panicked")
        })?;
        out.map_err(|e| match e {
            EngineError::Closed => not_serving(&self.gate),
            other => {
                tracing::error!(error = %other, "engine call failed");
                DataError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    format!("the storage engine failed: {other}"),
                )
            }
        })
    }
}

/// How much of an oversized body is read and dropped before the 413 goes out.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// Reads a body of at most `limit` bytes. A larger one is refused with `413 DOCUMENT_TOO_LARGE`
/// once the rest of it (up to [`DRAIN_BYTES`]) has been read and dropped: answering while the
/// client is still sending makes hyper close the connection under it, and the client then sees
/// a reset instead of the error (axum's body limit answers at once; hyper has no lingering
/// close).
async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if seen > limit => break,
            Err(e) => {
                return Err(DataError::invalid("body", format!("the body could not be read: {e}; send it again")));
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
    if seen > limit {
        return Err(DataError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "DOCUMENT_TOO_LARGE",
            format!("the body is larger than {limit} bytes; send a smaller one"),
        ));
    }
    Ok(buf.freeze())
}

fn check_collection(c: &str) -> Result<()> {
    if c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(DataError::invalid(
            "collection",
            format!("'{}' is not a collection name: use 1 to 64 of A-Z a-z 0-9 _ . -", c.escape_default()),
        ));
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 256 {
        return Err(DataError::invalid(field, "a document id is 1 to 256 bytes of UTF-8"));
    }
    if id.chars().any(|c| c.is_control() || c == '\u{10FFFF}') {
        return Err(DataError::invalid(field, "a document id may not contain control characters"));
    }
    Ok(())
}

fn check_document(field: &str, body: &[u8]) -> Result<String> {
    if body.len() > MAX_DOCUMENT {
        return Err(DataError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "DOCUMENT_TOO_LARGE",
            format!("{field} is {} bytes; a document is at most {MAX_DOCUMENT} bytes of JSON", body.len()),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| DataError::invalid(field, "the document is not UTF-8 JSON"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| DataError::invalid(field, format!("the document is not JSON ({e}); send a JSON value")))?;
    Ok(text.to_string())
}

async fn healthz(State(api): State<StatusApi>) -> Response {
    let s = api.gate.status();
    let status = if s.state.serves() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"state": s.state}))).into_response()
}

async fn status(State(api): State<StatusApi>, headers: HeaderMap) -> Result<Response> {
    // Status answers whatever the state: it is how a client learns why the node refuses.
    if let Err(e) = admit(&api.gate, &headers)
        && e.status == StatusCode::UNAUTHORIZED
    {
        return Err(e);
    }
    let mut body = serde_json::to_value(api.gate.status()).expect("the status serializes");
    let engine = api.engine.clone();
    body["engine"] = tokio::task::spawn_blocking(move || engine.describe()).await.unwrap_or(Value::Null);
    Ok(axum::Json(body).into_response())
}

async fn put_doc(
    State(api): State<Api>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    api.admit(&headers)?;
    let body = read_body(body, MAX_DOCUMENT).await?;
    check_collection(&collection)?;
    check_id("id", &id)?;
    let text = check_document("the body", &body)?;
    let (c, i) = (collection.clone(), id.clone());
    let version = api.run(move |e| e.put(&c, &i, &text)).await?;
    Ok(axum::Json(json!({"id": id, "version": version})).into_response())
}

fn document_not_found(collection: &str, id: &str) -> DataError {
    DataError::new(
        StatusCode::NOT_FOUND,
        "DOCUMENT_NOT_FOUND",
        format!("no document '{}' in collection {collection}", id.escape_default()),
    )
}

async fn get_doc(
    State(api): State<Api>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    api.admit(&headers)?;
    check_collection(&collection)?;
    check_id("id", &id)?;
    let (c, i) = (collection.clone(), id.clone());
    match api.run(move |e| e.get(&c, &i)).await? {
        Some(doc) => Ok((
            [(header::CONTENT_TYPE, "application/json".to_string()), (header::ETAG, format!("\"{}\"", doc.version))],
            doc.body,
        )
            .into_response()),
        None => Err(document_not_found(&collection, &id)),
    }
}

async fn delete_doc(
    State(api): State<Api>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    api.admit(&headers)?;
    check_collection(&collection)?;
    check_id("id", &id)?;
    let (c, i) = (collection.clone(), id.clone());
    if api.run(move |e| e.delete(&c, &i)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(document_not_found(&collection, &id))
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<String>,
    after: Option<String>,
}

async fn list(
    State(api): State<Api>,
    Path(collection): Path<String>,
    query: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    api.admit(&headers)?;
    check_collection(&collection)?;
    let Query(q) = query.map_err(|e| DataError::invalid("query", format!("{e}; use prefix, limit and after")))?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n @ 1..=1000) => n,
            _ => {
                return Err(DataError::invalid(
                    "limit",
                    format!("'{}' is not a number from 1 to 1000", l.escape_default()),
                ));
            }
        },
    };
    if !q.prefix.is_empty() {
        check_id("prefix", &q.prefix)?;
    }
    if let Some(a) = &q.after {
        check_id("after", a)?;
    }
    let c = collection.clone();
    let page = api.run(move |e| e.list(&c, &q.prefix, q.after.as_deref(), limit)).await?;
    let mut documents = Vec::with_capacity(page.documents.len());
    for d in page.documents {
        let document: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
        documents.push(json!({"id": d.id, "version": d.version, "document": document}));
    }
    Ok(axum::Json(json!({"documents": documents, "next": page.next})).into_response())
}

async fn batch(State(api): State<Api>, headers: HeaderMap, body: Body) -> Result<Response> {
    api.admit(&headers)?;
    let body = read_body(body, MAX_BATCH_BODY).await?;
    let root: Value = serde_json::from_slice(&body)
        .map_err(|e| DataError::invalid("body", format!("not JSON ({e}): send {{\"operations\": [...]}}")))?;
    let Some(obj) = root.as_object() else {
        return Err(DataError::invalid("body", "send an object: {\"operations\": [...]}"));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "operations") {
        return Err(DataError::invalid(unknown, "unknown attribute: the batch body has only operations"));
    }
    let Some(list) = obj.get("operations").and_then(Value::as_array) else {
        return Err(DataError::invalid("operations", "send an array of operations"));
    };
    if list.is_empty() || list.len() > MAX_BATCH_OPS {
        return Err(DataError::invalid(
            "operations",
            format!("a batch holds 1 to {MAX_BATCH_OPS} operations, not {}", list.len()),
        ));
    }
    let mut ops = Vec::with_capacity(list.len());
    for (n, op) in list.iter().enumerate() {
        let field = |f: &str| format!("operations[{n}].{f}");
        let Some(o) = op.as_object() else {
            return Err(DataError::invalid(&format!("operations[{n}]"), "an operation is an object"));
        };
        let text = |f: &str| -> Result<String> {
            o.get(f)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| DataError::invalid(&field(f), "a string is required"))
        };
        let kind = text("op")?;
        let collection = text("collection")?;
        check_collection(&collection)
            .map_err(|_| DataError::invalid(&field("collection"), "1 to 64 of A-Z a-z 0-9 _ . -"))?;
        let id = text("id")?;
        check_id(&field("id"), &id)?;
        let allowed: &[&str] = match kind.as_str() {
            "put" => &["op", "collection", "id", "document"],
            "delete" => &["op", "collection", "id"],
            other => {
                return Err(DataError::invalid(
                    &field("op"),
                    format!("'{}' is not an operation: use put or delete", other.escape_default()),
                ));
            }
        };
        if let Some(unknown) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(DataError::invalid(&field(unknown), format!("unknown attribute for a {kind}")));
        }
        ops.push(if kind == "put" {
            let doc =
                o.get("document").ok_or_else(|| DataError::invalid(&field("document"), "a put needs a document"))?;
            let text = serde_json::to_string(doc).expect("a JSON value serializes");
            if text.len() > MAX_DOCUMENT {
                return Err(DataError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "DOCUMENT_TOO_LARGE",
                    format!("{} is larger than {MAX_DOCUMENT} bytes", field("document")),
                ));
            }
            BatchOp::Put { collection, id, body: text }
        } else {
            BatchOp::Delete { collection, id }
        });
    }
    let results = api.run(move |e| e.batch(&ops)).await?;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            BatchResult::Put { version } => json!({"op": "put", "version": version}),
            BatchResult::Delete { existed } => json!({"op": "delete", "existed": existed}),
        })
        .collect();
    Ok(axum::Json(json!({"results": results})).into_response())
}

#[cfg(test)]
mod tests {
    //! The data API over real HTTP on 127.0.0.1:0, on a real encrypted engine, with the gate
    //! driven by hand (the lifecycle that drives it in production is tested in tests/).
    use super::*;
    use crate::control::{DataCredentialHash, ReportedError};
    use crate::engine::Engine;
    use crate::engine::sqlcipher::{Durability, Encryption};
    use crate::keystore::DataKeys;
    use crate::secret::KeyBytes;

    const CRED: &str = "atrd_0123456789abcdef01234567_secret";

    struct Served {
        _dir: tempfile::TempDir,
        gate: Arc<Gate>,
        engine: Arc<SqlCipherEngine>,
        url: String,
        http: reqwest::Client,
    }

    async fn serve() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(SqlCipherEngine::new(dir.path(), Encryption::Encrypted, Durability::Normal));
        engine.open(&DataKeys::single(KeyBytes::random().unwrap())).unwrap();
        let gate = Arc::new(Gate::new("n1"));
        let sha = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CRED.as_bytes()).as_ref());
        gate.set_data_credentials(vec![DataCredentialHash { id: "c1".into(), sha256: sha }]);
        gate.publish(|s| s.state = NodeState::Serving);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = router(gate.clone(), engine.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Served { _dir: dir, gate, engine, url, http: reqwest::Client::new() }
    }

    impl Served {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<String>,
            cred: Option<&str>,
        ) -> (StatusCode, Value) {
            let mut rb = self.http.request(method, format!("{}{path}", self.url));
            if let Some(c) = cred {
                rb = rb.bearer_auth(c);
            }
            if let Some(b) = body {
                rb = rb.header("content-type", "application/json").body(b);
            }
            let r = rb.send().await.unwrap();
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
            let text = r.text().await.unwrap();
            (
                status,
                if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) },
            )
        }
    }

    #[tokio::test]
    async fn documents_round_trip_list_and_batch() {
        let s = serve().await;
        use reqwest::Method;
        let (st, v) = s
            .call(Method::PUT, "/v1/collections/people/documents/ada", Some(r#"{"name":"Ada"}"#.into()), Some(CRED))
            .await;
        assert_eq!((st, v["version"].as_i64()), (StatusCode::OK, Some(1)), "{v}");
        let (st, v) = s
            .call(Method::PUT, "/v1/collections/people/documents/ada", Some(r#"{"name":"Ada L"}"#.into()), Some(CRED))
            .await;
        assert_eq!(v["version"], 2, "{st} {v}");
        let (st, v) = s.call(Method::GET, "/v1/collections/people/documents/ada", None, Some(CRED)).await;
        assert_eq!((st, v), (StatusCode::OK, json!({"name": "Ada L"})));
        let ops = json!({"operations": [
            {"op": "put", "collection": "people", "id": "bob", "document": {"n": 1}},
            {"op": "put", "collection": "people", "id": "bea", "document": [1, 2]},
            {"op": "delete", "collection": "people", "id": "ada"},
        ]});
        let (st, v) = s.call(Method::POST, "/v1/batch", Some(ops.to_string()), Some(CRED)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["results"][2], json!({"op": "delete", "existed": true}));
        let (_, v) = s.call(Method::GET, "/v1/collections/people/documents?prefix=b&limit=1", None, Some(CRED)).await;
        assert_eq!(v["documents"][0]["id"], "bea", "{v}");
        assert_eq!(v["next"], "bea");
        let (_, v) = s.call(Method::GET, "/v1/collections/people/documents?prefix=b&after=bea", None, Some(CRED)).await;
        assert_eq!(v["documents"][0]["document"], json!({"n": 1}), "{v}");
        assert_eq!(v["next"], Value::Null);
        let (st, _) = s.call(Method::DELETE, "/v1/collections/people/documents/bob", None, Some(CRED)).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, v) = s.call(Method::DELETE, "/v1/collections/people/documents/bob", None, Some(CRED)).await;
        assert_eq!((st, v["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("DOCUMENT_NOT_FOUND")));
    }

    #[tokio::test]
    async fn bad_input_is_refused_and_changes_nothing() {
        use reqwest::Method;
        let s = serve().await;
        s.call(Method::PUT, "/v1/collections/c/documents/keep", Some(r#"{"v":1}"#.into()), Some(CRED)).await;
        let big = format!("\"{}\"", "x".repeat(MAX_DOCUMENT + 1));
        let too_many = json!({"operations": (0..=MAX_BATCH_OPS).map(|i| json!({"op": "delete", "collection": "c", "id": i.to_string()})).collect::<Vec<_>>()});
        // (what, method, path, body, credential, status, errorCode)
        type Case<'a> = (&'a str, Method, String, Option<String>, Option<&'a str>, StatusCode, &'a str);
        let cases: Vec<Case> = vec![
            ("no credential", Method::GET, "/v1/collections/c/documents/keep".into(), None, None, StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ("wrong credential", Method::GET, "/v1/collections/c/documents/keep".into(), None, Some("atrd_x_y"), StatusCode::UNAUTHORIZED, "INVALID_DATA_CREDENTIAL"),
            ("bad collection", Method::PUT, "/v1/collections/a%20b/documents/keep".into(), Some("{}".into()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("long collection", Method::GET, format!("/v1/collections/{}/documents/keep", "c".repeat(65)), None, Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("control character in id", Method::PUT, "/v1/collections/c/documents/a%07b".into(), Some("{}".into()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("not JSON", Method::PUT, "/v1/collections/c/documents/keep".into(), Some("{v:2".into()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("too large", Method::PUT, "/v1/collections/c/documents/keep".into(), Some(big), Some(CRED), StatusCode::PAYLOAD_TOO_LARGE, "DOCUMENT_TOO_LARGE"),
            // Far over the limit: the client is still sending when the node has read enough
            // to refuse, and must still get the 413, not a reset.
            ("8 MiB document", Method::PUT, "/v1/collections/c/documents/keep".into(), Some("x".repeat(8 * MAX_DOCUMENT)), Some(CRED), StatusCode::PAYLOAD_TOO_LARGE, "DOCUMENT_TOO_LARGE"),
            ("batch too large", Method::POST, "/v1/batch".into(), Some(" ".repeat(MAX_BATCH_BODY + 1)), Some(CRED), StatusCode::PAYLOAD_TOO_LARGE, "DOCUMENT_TOO_LARGE"),
            ("bad limit", Method::GET, "/v1/collections/c/documents?limit=0".into(), None, Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("unknown op", Method::POST, "/v1/batch".into(), Some(json!({"operations": [{"op": "upsert", "collection": "c", "id": "keep"}]}).to_string()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("unknown batch field", Method::POST, "/v1/batch".into(), Some(json!({"operations": [], "atomic": true}).to_string()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("empty batch", Method::POST, "/v1/batch".into(), Some(json!({"operations": []}).to_string()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            ("too many ops", Method::POST, "/v1/batch".into(), Some(too_many.to_string()), Some(CRED), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
            (
                "a bad op makes the whole batch fail",
                Method::POST,
                "/v1/batch".into(),
                Some(json!({"operations": [{"op": "delete", "collection": "c", "id": "keep"}, {"op": "put", "collection": "c", "id": "x"}]}).to_string()),
                Some(CRED),
                StatusCode::BAD_REQUEST,
                "INVALID_ATTRIBUTE",
            ),
            ("unknown path", Method::GET, "/v2/things".into(), None, Some(CRED), StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND"),
        ];
        for (what, method, path, body, cred, status, code) in cases {
            let (st, v) = s.call(method, &path, body, cred).await;
            assert_eq!(st, status, "{what}: {v}");
            assert_eq!(v["errorCode"], code, "{what}: {v}");
            assert!(v["detail"].as_str().is_some_and(|d| d.len() > 15), "{what}: the detail explains: {v}");
            let (_, kept) = s.call(Method::GET, "/v1/collections/c/documents/keep", None, Some(CRED)).await;
            assert_eq!(kept, json!({"v": 1}), "{what}: the stored document changed");
        }
    }

    #[tokio::test]
    async fn a_node_that_does_not_serve_refuses_with_the_reason_and_the_fix() {
        use reqwest::Method;
        let s = serve().await;
        s.call(Method::PUT, "/v1/collections/c/documents/d", Some("1".into()), Some(CRED)).await;
        s.gate.publish(|st| {
            st.state = NodeState::ShutDown;
            st.last_error = Some(ReportedError {
                kind: "DENIED",
                azure_code: Some("ForbiddenByRbac".into()),
                message: "Key Vault denied (HTTP 403, ForbiddenByRbac)".into(),
                fix: Some("az role assignment create --role \"Key Vault Crypto User\" ...".into()),
            });
        });
        s.engine.close().unwrap();
        let (st, v) = s.call(Method::GET, "/v1/collections/c/documents/d", None, Some(CRED)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["errorCode"], "NODE_SHUT_DOWN");
        assert_eq!(v["parameters"][0], "ForbiddenByRbac");
        assert!(v["fix"].as_str().unwrap().starts_with("az role assignment create"), "{v}");
        // Unauthenticated callers learn nothing of the reason.
        let (st, v) = s.call(Method::GET, "/v1/collections/c/documents/d", None, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        assert!(v.get("fix").is_none());
        let (st, v) = s.call(Method::GET, "/healthz", None, None).await;
        assert_eq!((st, v["state"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("SHUT_DOWN")));
        let (st, v) = s.call(Method::GET, "/v1/status", None, Some(CRED)).await;
        assert_eq!((st, v["state"].as_str()), (StatusCode::OK, Some("SHUT_DOWN")), "{v}");
        // The engine refuses by itself too: a request that passed the gate before the shutdown
        // still gets no data.
        s.gate.publish(|st| st.state = NodeState::Serving);
        let (st, v) = s.call(Method::GET, "/v1/collections/c/documents/d", None, Some(CRED)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    }
}
