//! Logging and tracing setup: human-readable text or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`); with the cargo feature `otel`, spans are also exported with OTLP over
//! HTTP/protobuf when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set. The standard OpenTelemetry variables apply (`OTEL_SERVICE_NAME`, default `ferry`;
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `OTEL_SDK_DISABLED`).

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// What was set up; [`Telemetry::shutdown`] flushes exported spans before the process exits.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Why tracing is not exported although it was asked for (logged once logging works).
    problem: Option<String>,
}

impl Telemetry {
    /// Read the environment: with the `otel` feature and an OTLP endpoint set, build the span
    /// exporter; otherwise nothing to export.
    pub fn from_env() -> Self {
        install_tls_provider();
        #[cfg(feature = "otel")]
        {
            match otel::provider_from_env() {
                Ok(provider) => Telemetry {
                    provider,
                    problem: None,
                },
                Err(problem) => Telemetry {
                    provider: None,
                    problem: Some(problem),
                },
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let asked = [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ]
            .into_iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
            Telemetry {
                problem: asked.then(|| {
                    "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this ferry was built without the \
                     `otel` feature: spans are not exported"
                        .to_string()
                }),
            }
        }
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.provider.is_some()
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }

    /// The subscriber: logs in `format`, spans exported when configured, all filtered by `filter`.
    pub fn subscriber(
        &self,
        format: LogFormat,
        filter: EnvFilter,
    ) -> impl tracing::Subscriber + Send + Sync + 'static {
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs: BoxedLayer = match format {
            // Colours only for a person at a terminal, never into a log file or collector.
            LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
            LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        };
        #[cfg(feature = "otel")]
        let spans = self.provider.as_ref().map(otel::layer);
        #[cfg(not(feature = "otel"))]
        let spans: Option<BoxedLayer> = None;
        let layers: Vec<BoxedLayer> = std::iter::once(logs).chain(spans).collect();
        tracing_subscriber::registry().with(layers).with(filter)
    }

    /// Export what is still buffered and stop the exporter. Blocks (up to the exporter's
    /// timeout); call it outside the async runtime.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
    }
}

/// Install the global subscriber; keep the result and call [`Telemetry::shutdown`] at exit.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let telemetry = Telemetry::from_env();
    telemetry.subscriber(format, filter).init();
    if let Some(problem) = &telemetry.problem {
        tracing::warn!("{problem}");
    } else if telemetry.exporting() {
        tracing::info!("exporting traces with OTLP/HTTP");
    }
    telemetry
}

#[cfg(feature = "otel")]
pub mod otel {
    //! OpenTelemetry: a batch span exporter over OTLP/HTTP (protobuf), configured by the
    //! standard environment variables.

    use super::BoxedLayer;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    /// Service name unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name one.
    pub const SERVICE_NAME: &str = "ferry";

    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// A tracer provider exporting to the configured endpoint, or `None` when no endpoint is
    /// set or `OTEL_SDK_DISABLED=true`.
    pub fn provider_from_env() -> Result<Option<SdkTracerProvider>, String> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = var(name) {
                if p != "http/protobuf" {
                    return Err(format!(
                        "{name}={p} is not supported: ferry exports traces with http/protobuf only"
                    ));
                }
                break;
            }
        }
        // The endpoint, headers and timeout come from the OTEL_EXPORTER_OTLP_* variables
        // (`/v1/traces` is appended to OTEL_EXPORTER_OTLP_ENDPOINT).
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
        let named = var("OTEL_SERVICE_NAME").is_some()
            || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        let mut resource = Resource::builder();
        if !named {
            resource = resource.with_service_name(SERVICE_NAME);
        }
        Ok(Some(
            SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter)
                .build(),
        ))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub(super) fn layer(provider: &SdkTracerProvider) -> BoxedLayer {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("ferry"))
            .boxed()
    }
}

/// Make rustls with ring (the provider the Kubernetes client uses) the process default, so that
/// every HTTPS client (OTLP export, image import, Redfish) can be built. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
