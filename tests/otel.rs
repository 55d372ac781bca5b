//! OpenTelemetry export, for real: a tiny OTLP/HTTP receiver on 127.0.0.1 records what ferry's
//! telemetry setup sends when `OTEL_EXPORTER_OTLP_ENDPOINT` points at it.
//! Run with `cargo test --features otel --test otel`.
#![cfg(feature = "otel")]

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use ferry::telemetry::{LogFormat, Telemetry};
use std::sync::{Arc, Mutex};
use tracing_subscriber::EnvFilter;

/// One request the receiver got: path, content type, body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn spans_are_exported_with_otlp_http_and_flushed_on_shutdown() {
    // Bind first, then point the standard variable at it, before any other thread runs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    // SAFETY: the only test in this binary; no other thread reads the environment yet.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
        std::env::remove_var("OTEL_SERVICE_NAME");
        std::env::remove_var("OTEL_RESOURCE_ATTRIBUTES");
        std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        std::env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");
        std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        std::env::remove_var("OTEL_SDK_DISABLED");
    }
    listener.set_nonblocking(true).expect("nonblocking");

    let received: Received = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let log = received.clone();
    rt.spawn(async move {
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                log.lock()
                    .expect("lock")
                    .push((uri.path().to_string(), ct, body.to_vec()));
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        });
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        axum::serve(listener, app).await.expect("serve");
    });

    let telemetry = Telemetry::from_env();
    assert!(
        telemetry.exporting(),
        "OTEL_EXPORTER_OTLP_ENDPOINT set: spans are exported"
    );
    let subscriber = telemetry.subscriber(LogFormat::Json, EnvFilter::new("info"));
    tracing::subscriber::with_default(subscriber, || {
        // The span the controllers' reconcile functions open.
        let span = tracing::info_span!(
            "reconcile",
            object.kind = "VirtualMachine",
            object.namespace = "vms",
            object.name = "web-1"
        );
        span.in_scope(|| tracing::info!("reconciled"));
    });
    // Nothing is sent before the batch is due (5 s by default): shutdown must flush it.
    assert!(received.lock().expect("lock").is_empty());
    telemetry.shutdown();

    let got = received.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "one export request: {got:?}");
    let (path, content_type, body) = &got[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    // The resource attribute as protobuf encodes it: KeyValue { key: "service.name",
    // value: AnyValue { string_value: "ferry" } }.
    assert!(
        contains(body, b"\x0a\x0cservice.name\x12\x07\x0a\x05ferry"),
        "service.name=ferry not in the exported protobuf: {body:?}"
    );
    for needle in [
        &b"reconcile"[..],
        b"object.kind",
        b"object.name",
        b"VirtualMachine",
        b"vms",
        b"web-1",
    ] {
        assert!(
            contains(body, needle),
            "{} not in the exported protobuf",
            String::from_utf8_lossy(needle)
        );
    }
    rt.shutdown_background();
}
