//! Prometheus metrics at `/metrics`: requests by route, method and status with latency; Azure
//! calls by operation and outcome; token-cache counters; validations by trigger and result.
//!
//! Each control plane has its own registry (no process globals), so several replicas can run in
//! one test process and each reports only its own traffic.

use std::sync::Arc;
use std::time::Duration;

use atrest_azure::TokenCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AzureCallLabels {
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValidationLabels {
    pub trigger: String,
    pub result: String,
}

/// The control plane's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    azure_calls: Family<AzureCallLabels, Counter>,
    validations: Family<ValidationLabels, Counter>,
    token_requests: Gauge,
    token_hits: Gauge,
    token_misses: Gauge,
    cache: Arc<TokenCache>,
}

impl Metrics {
    pub fn new(cache: Arc<TokenCache>) -> Metrics {
        let mut registry = Registry::with_prefix("atrest");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let azure_calls = Family::<AzureCallLabels, Counter>::default();
        let validations = Family::<ValidationLabels, Counter>::default();
        let token_requests = Gauge::default();
        let token_hits = Gauge::default();
        let token_misses = Gauge::default();
        registry.register("http_requests", "Atlas API requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "Atlas API request latency", latency.clone());
        registry.register("azure_calls", "Calls to Azure by operation and outcome", azure_calls.clone());
        registry.register("validations", "Key Vault validations by trigger and result", validations.clone());
        registry.register(
            "entra_token_requests",
            "Token requests sent to Entra ID (cumulative)",
            token_requests.clone(),
        );
        registry.register("token_cache_hits", "Token cache hits (cumulative)", token_hits.clone());
        registry.register("token_cache_misses", "Token cache misses (cumulative)", token_misses.clone());
        Metrics {
            inner: Arc::new(MetricsInner {
                registry,
                requests,
                latency,
                azure_calls,
                validations,
                token_requests,
                token_hits,
                token_misses,
                cache,
            }),
        }
    }

    pub fn request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.inner.requests.get_or_create(&RequestLabels { route: route.into(), method: method.into(), status }).inc();
        self.inner
            .latency
            .get_or_create(&RouteLabels { route: route.into(), method: method.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// One call to Azure: `operation` like `entra.token`, `arm.get_vault`, `keyvault.unwrap`;
    /// `outcome` `ok` or an error kind (`denied`, `not_found`, `disabled`, `unreachable`, ...).
    pub fn azure_call(&self, operation: &str, outcome: &str) {
        self.inner
            .azure_calls
            .get_or_create(&AzureCallLabels { operation: operation.into(), outcome: outcome.into() })
            .inc();
    }

    /// One validation: `trigger` `patch`, `dry_run`, `background` or `read`; `result` `valid`,
    /// `invalid`, `unreachable` or `pending`.
    pub fn validation(&self, trigger: &str, result: &str) {
        self.inner
            .validations
            .get_or_create(&ValidationLabels { trigger: trigger.into(), result: result.into() })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let stats = self.inner.cache.stats();
        self.inner.token_requests.set(stats.token_requests as i64);
        self.inner.token_hits.set(stats.cache_hits as i64);
        self.inner.token_misses.set(stats.cache_misses as i64);
        let mut out = String::new();
        encode(&mut out, &self.inner.registry).expect("writing to a String cannot fail");
        out
    }
}
