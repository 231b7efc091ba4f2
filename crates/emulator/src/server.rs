//! Listeners, TLS, routing by host name, fault injection and throttling.
//!
//! One TLS listener serves every Azure host name (the certificate covers them all, with the
//! wildcard vault suffixes). A request is routed by its Host (or HTTP/2 `:authority`, or the TLS
//! SNI when neither is present). Requests to `127.0.0.1`/`localhost` are routed by path instead,
//! so a client that cannot map host names still reaches Entra, ARM, Graph and the admin API.
//! Private-endpoint listeners are more listeners of the same kind whose requests carry
//! [`ListenerKind::PrivateEndpoint`], which the Key Vault surface checks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use uuid::Uuid;

use atrest_domain::{AzureEnvironment, HostKind};

use crate::Ctx;
use crate::errors::{self, Surface};
use crate::state::FaultKind;

/// Which listener a request arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    Public,
    /// A private endpoint created for one vault (lowercase name).
    PrivateEndpoint {
        id: Uuid,
        vault: String,
    },
}

/// Which surface serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Login,
    Arm,
    Graph,
    /// A vault host; carries the lowercase vault name.
    Vault(String),
    Admin,
}

impl Route {
    pub fn surface(&self) -> Surface {
        match self {
            Route::Login => Surface::Entra,
            Route::Arm => Surface::Arm,
            Route::Graph => Surface::Graph,
            Route::Vault(_) => Surface::Vault,
            Route::Admin => Surface::Admin,
        }
    }
}

/// Facts about a request that handlers need, inserted as a request extension.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The cloud whose host name was used (public cloud for loopback addresses).
    pub cloud: AzureEnvironment,
    /// Lowercase host without port.
    pub host: String,
    pub route: Route,
    pub listener: ListenerKind,
    pub peer: SocketAddr,
    /// `https://{Host header as sent}`, for building absolute URLs (nextLink, endpoints).
    pub origin: String,
}

/// The routers of every surface, with the context applied.
pub struct Routers {
    login: Router,
    arm: Router,
    graph: Router,
    vault: Router,
    admin: Router,
}

impl Routers {
    pub fn new(ctx: Ctx) -> Self {
        Self {
            login: crate::entra::router().with_state(ctx.clone()),
            arm: crate::arm::router().with_state(ctx.clone()),
            graph: crate::graph::router().with_state(ctx.clone()),
            vault: crate::keyvault::router().with_state(ctx.clone()),
            admin: crate::admin::router().with_state(ctx),
        }
    }
}

/// Accept connections until shutdown.
pub async fn serve(ctx: Ctx, listener: TcpListener, kind: ListenerKind) {
    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.tls.clone());
    let mut shutdown = ctx.shutdown_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                tokio::spawn(serve_connection(ctx.clone(), acceptor.clone(), tcp, peer, kind.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Bind a private-endpoint listener for `vault` on `127.0.0.1:port` (0 = any free port).
pub async fn spawn_private_listener(
    ctx: &Ctx,
    id: Uuid,
    vault: &str,
    port: u16,
) -> std::io::Result<(u16, tokio::task::AbortHandle)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(serve(
        ctx.clone(),
        listener,
        ListenerKind::PrivateEndpoint { id, vault: vault.to_ascii_lowercase() },
    ));
    Ok((port, task.abort_handle()))
}

async fn serve_connection(
    ctx: Ctx,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let sni = tls.get_ref().1.server_name().map(|s| s.to_ascii_lowercase());
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        let sni = sni.clone();
        let kind = kind.clone();
        async move { dispatch(ctx, req.map(Body::new), peer, sni, kind).await }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Host name of a request, lowercase, without port.
fn request_host(req: &Request<Body>, sni: Option<&str>) -> (String, String) {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .or_else(|| sni.map(str::to_string))
        .unwrap_or_default();
    let host = match raw.parse::<http::uri::Authority>() {
        Ok(a) => a.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(),
        Err(_) => raw.to_ascii_lowercase(),
    };
    (host, raw)
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok()
}

/// Route a request by host (or by path on loopback names).
pub fn route_for(host: &str, path: &str) -> Option<(AzureEnvironment, Route)> {
    if path == "/_emulator" || path.starts_with("/_emulator/") {
        let cloud = AzureEnvironment::classify_host(host).map(|(c, _)| c).unwrap_or(AzureEnvironment::Azure);
        return Some((cloud, Route::Admin));
    }
    if is_loopback_name(host) {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let route = match first {
            "v1.0" | "beta" => Route::Graph,
            "subscriptions" | "tenants" | "providers" | "metadata" => Route::Arm,
            _ => Route::Login,
        };
        return Some((AzureEnvironment::Azure, route));
    }
    let (cloud, kind) = AzureEnvironment::classify_host(host)?;
    let route = match kind {
        HostKind::Login => Route::Login,
        HostKind::Arm => Route::Arm,
        HostKind::Graph => Route::Graph,
        HostKind::Vault(v) => Route::Vault(v),
    };
    Some((cloud, route))
}

async fn dispatch(
    ctx: Ctx,
    req: Request<Body>,
    peer: SocketAddr,
    sni: Option<String>,
    listener: ListenerKind,
) -> Result<Response<Body>, std::io::Error> {
    let (host, raw_host) = request_host(&req, sni.as_deref());
    let routed = route_for(&host, req.uri().path());
    let mut key =
        routed.as_ref().and_then(|(_, route)| crate::requests::classify(route, req.method(), req.uri().path()));
    let out = dispatch_routed(&ctx, req, peer, (host, raw_host, routed), listener, &mut key).await;
    // Counted once answered (or dropped), so that `errors` tells refused requests apart.
    if let Some(key) = key {
        let ok = out.as_ref().is_ok_and(|r| r.status().as_u16() < 400);
        ctx.requests.record(key, ok);
    }
    out
}

/// `dispatch` after the host and route were worked out (once, for the request counts too):
/// `target` is the host, the raw `Host` header's value and the route, if any.
async fn dispatch_routed(
    ctx: &Ctx,
    req: Request<Body>,
    peer: SocketAddr,
    target: (String, String, Option<(AzureEnvironment, Route)>),
    listener: ListenerKind,
    key: &mut Option<crate::requests::RequestKey>,
) -> Result<Response<Body>, std::io::Error> {
    let ctx = ctx.clone();
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (host, raw_host, routed) = target;
    let Some((cloud, route)) = routed else {
        return Ok(errors::arm(
            StatusCode::NOT_FOUND,
            "HostNotFound",
            &format!(
                "The host '{host}' is not an Azure host the atrest emulator serves. Use login.microsoftonline.com, management.azure.com, graph.microsoft.com or <vault>.vault.azure.net (or their sovereign-cloud equivalents)."
            ),
        ));
    };
    let surface = route.surface();

    if route != Route::Admin {
        if let Some(kind) = take_fault(&ctx, &host, &route, &path) {
            match kind {
                FaultKind::Latency { millis } => tokio::time::sleep(Duration::from_millis(millis)).await,
                FaultKind::Throttle { retry_after_secs } => return Ok(errors::throttled(surface, retry_after_secs)),
                FaultKind::ServerError { status } => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    return Ok(errors::injected_server_error(surface, status));
                }
                FaultKind::Reset => {
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault injected: reset"));
                }
                FaultKind::Blackhole => {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "fault injected: blackhole"));
                }
            }
        }
        if let Route::Vault(v) = &route
            && let Some(retry) = throttle_check(&ctx, v)
        {
            return Ok(errors::throttled(surface, retry));
        }
    }

    // Buffer the body under the size limit so every surface answers an oversized body in its
    // own error shape, and handlers get the bytes in one piece.
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > ctx.max_body) {
        drain(body).await;
        return Ok(errors::too_large(surface, ctx.max_body));
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| std::io::Error::other("client body error"))?.into_data() else { continue };
        if buf.len() + data.len() > ctx.max_body {
            drain(body).await;
            return Ok(errors::too_large(surface, ctx.max_body));
        }
        buf.extend_from_slice(&data);
    }
    let bytes = buf.freeze();
    if let Some(k) = key.as_mut() {
        crate::requests::fill_token_fields(k, &bytes);
    }
    parts.extensions.insert(RequestInfo {
        cloud,
        host: host.clone(),
        route: route.clone(),
        listener,
        peer,
        origin: format!("https://{raw_host}"),
    });
    let req = Request::from_parts(parts, Body::from(bytes));
    let routers = ctx.routers();
    let router = match &route {
        Route::Login => routers.login.clone(),
        Route::Arm => routers.arm.clone(),
        Route::Graph => routers.graph.clone(),
        Route::Vault(_) => routers.vault.clone(),
        Route::Admin => routers.admin.clone(),
    };
    let resp: Response<Body> = match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let mut resp = resp;
    resp.headers_mut().insert(
        "x-ms-request-id",
        http::HeaderValue::from_str(&Uuid::new_v4().to_string()).expect("uuid is a valid header"),
    );
    tracing::info!(
        %method, host = %host, path = %path, status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64, "request"
    );
    Ok(resp)
}

/// The first fault matching this request, consuming one use of it.
fn take_fault(ctx: &Ctx, host: &str, route: &Route, path: &str) -> Option<FaultKind> {
    let mut faults = ctx.faults.lock();
    let idx = faults.iter().position(|f| {
        f.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host))
            && f.vault.as_deref().is_none_or(|v| matches!(route, Route::Vault(rv) if rv.eq_ignore_ascii_case(v)))
            && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    })?;
    let kind = faults[idx].kind.clone();
    if let Some(n) = faults[idx].remaining.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            faults.remove(idx);
        }
    }
    Some(kind)
}

/// Sliding-window per-vault throttle. Returns `Some(retry_after_secs)` when over the limit.
fn throttle_check(ctx: &Ctx, vault: &str) -> Option<u64> {
    let mut throttles = ctx.throttles.lock();
    let t = throttles.get_mut(vault)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
    while t.hits.front().is_some_and(|&h| h <= now - t.window_ms) {
        t.hits.pop_front();
    }
    if (t.hits.len() as u64) < t.limit {
        t.hits.push_back(now);
        None
    } else {
        let oldest = *t.hits.front().unwrap_or(&now);
        let wait_ms = (oldest + t.window_ms - now).max(1);
        Some(((wait_ms + 999) / 1000) as u64)
    }
}

/// A handler for routes a surface does not have.
pub async fn not_found(req: Request<Body>) -> Response<Body> {
    let surface = req.extensions().get::<RequestInfo>().map(|i| i.route.surface()).unwrap_or(Surface::Arm);
    let msg = format!("No route for {} {} on this service.", req.method(), req.uri().path());
    match surface {
        Surface::Vault => errors::vault(StatusCode::NOT_FOUND, "NotFound", &msg, None),
        Surface::Graph => errors::graph(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &msg),
        Surface::Entra => errors::aad(StatusCode::NOT_FOUND, "invalid_request", 900561, &msg),
        Surface::Arm | Surface::Admin => errors::arm(StatusCode::NOT_FOUND, "NotFound", &msg),
    }
}

/// A handler for a known path with the wrong method.
pub async fn method_not_allowed(req: Request<Body>) -> Response<Body> {
    let surface = req.extensions().get::<RequestInfo>().map(|i| i.route.surface()).unwrap_or(Surface::Arm);
    let msg = format!("The method {} is not allowed on {}.", req.method(), req.uri().path());
    match surface {
        Surface::Vault => errors::vault(StatusCode::METHOD_NOT_ALLOWED, "BadParameter", &msg, None),
        Surface::Graph => errors::graph(StatusCode::METHOD_NOT_ALLOWED, "Request_BadRequest", &msg),
        Surface::Entra => errors::aad(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", 900561, &msg),
        Surface::Arm | Surface::Admin => errors::arm(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &msg),
    }
}

/// Reads and drops what is left of an oversized body (up to 16 MiB), so that the client, which
/// is usually still sending, reads the 413 rather than a connection reset: hyper answers and
/// closes at once otherwise, as it has no lingering close.
async fn drain(mut body: axum::body::Body) {
    let mut left: usize = 16 * 1024 * 1024;
    while left > 0
        && let Some(Ok(frame)) = body.frame().await
    {
        left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len()));
    }
}
