//! Observability of the server: the tower layer that measures every gRPC
//! call ([`RpcMetricsLayer`]), and the plain-HTTP `/metrics` endpoint
//! ([`serve_metrics`]) that `[metrics] listen` turns on.
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::Full;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::Code;

use crate::core::Sigil;
use crate::error::Error;
use crate::metrics;

/// The label of a method the server does not serve (bounded labels: a
/// caller cannot add series by inventing paths).
const UNKNOWN: &str = "unknown";

/// Service and method labels of every path the server serves
/// (`/package.Service/Method`), read from the descriptor sets it serves.
#[derive(Debug, Default)]
struct Methods(HashMap<String, (Arc<str>, Arc<str>)>);

impl Methods {
    fn from_descriptor_sets(sets: &[&[u8]]) -> Methods {
        let mut map = HashMap::new();
        for set in sets {
            let Ok(fds) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("a descriptor set does not decode; its methods are counted as unknown");
                continue;
            };
            for file in fds.file {
                let package = file.package.unwrap_or_default();
                for svc in file.service {
                    let name = svc.name.unwrap_or_default();
                    let full: Arc<str> = if package.is_empty() {
                        name.into()
                    } else {
                        format!("{package}.{name}").into()
                    };
                    for m in svc.method {
                        let method = m.name.unwrap_or_default();
                        map.insert(format!("/{full}/{method}"), (full.clone(), Arc::from(method)));
                    }
                }
            }
        }
        Methods(map)
    }

    fn labels(&self, path: &str) -> (Arc<str>, Arc<str>) {
        self.0
            .get(path)
            .cloned()
            .unwrap_or_else(|| (Arc::from(UNKNOWN), Arc::from(UNKNOWN)))
    }
}

/// Measures every call of the services it wraps: count and latency by
/// service, method and status code, and the calls in flight.
#[derive(Clone)]
pub(crate) struct RpcMetricsLayer {
    methods: Arc<Methods>,
}

impl RpcMetricsLayer {
    /// A layer that knows the methods of these descriptor sets.
    pub(crate) fn new(descriptor_sets: &[&[u8]]) -> Self {
        RpcMetricsLayer {
            methods: Arc::new(Methods::from_descriptor_sets(descriptor_sets)),
        }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// A service behind the [`RpcMetricsLayer`].
#[derive(Clone)]
pub(crate) struct Measured<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S> Service<http::Request<Body>> for Measured<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (service, method) = self.methods.labels(req.uri().path());
        let mut call = Call::begin(service, method);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            // A refusal comes "trailers-only": its status is in the headers.
            call.code = grpc_status(resp.headers());
            Ok(resp.map(|body| {
                Body::new(MeasuredBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// One call being measured; recorded exactly once, when dropped (the
/// answer's end, or the call abandoned).
struct Call {
    service: Arc<str>,
    method: Arc<str>,
    start: Instant,
    code: Option<Code>,
}

impl Call {
    fn begin(service: Arc<str>, method: Arc<str>) -> Call {
        metrics::rpc_in_flight(1);
        Call {
            service,
            method,
            start: Instant::now(),
            code: None,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        metrics::rpc_in_flight(-1);
        // No status at all: the caller went away before the answer ended.
        let code = code_name(self.code.unwrap_or(Code::Cancelled));
        metrics::rpc_answered(&self.service, &self.method, code, self.start.elapsed());
    }
}

/// The answer's body, watched for the status in its trailers and for its
/// end.
struct MeasuredBody {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for MeasuredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    if let Some(c) = self.call.as_mut() {
                        c.code = Some(code);
                    }
                }
            }
            Poll::Ready(Some(Err(st))) => {
                if let Some(c) = self.call.as_mut() {
                    c.code = Some(st.code());
                }
            }
            Poll::Ready(None) => {
                // The end: record now, not when hyper drops the body.
                self.call = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` of a header map (headers or trailers).
fn grpc_status(h: &http::HeaderMap) -> Option<Code> {
    let v = h.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(v))
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...).
pub(crate) fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The running `/metrics` endpoint.
pub struct MetricsEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a scraper may take to send its request line and headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` (Prometheus text format) on `listen`, plain HTTP,
/// until the returned endpoint is dropped. Any other path is 404, any
/// other method on it 405. The HSM session gauges are read at each scrape.
pub async fn serve_metrics(listen: SocketAddr, sigil: Arc<Sigil>) -> Result<MetricsEndpoint, Error> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen for metrics on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("metrics listener has no address: {e}")))?;
    let task = tokio::spawn(accept_loop(listener, sigil));
    tracing::info!(%addr, "metrics served at http://{addr}/metrics");
    Ok(MetricsEndpoint { addr, task })
}

async fn accept_loop(listener: TcpListener, sigil: Arc<Sigil>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sigil = sigil.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sigil = sigil.clone();
                async move { Ok::<_, Infallible>(answer(&sigil, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn answer<B>(sigil: &Sigil, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, content_type: &str, body: String| {
        let mut r = http::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut r = reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        );
        r.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let pool = sigil.signer().hsm().sessions();
    metrics::set_hsm_sessions(pool.idle, pool.open.saturating_sub(pool.idle), pool.size);
    reply(http::StatusCode::OK, metrics::CONTENT_TYPE, metrics::render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_labelled_and_others_are_unknown() {
        let m =
            Methods::from_descriptor_sets(&[super::super::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET]);
        let (s, meth) = m.labels("/sigil.v1.ApprovalService/BeginApproval");
        assert_eq!((&*s, &*meth), ("sigil.v1.ApprovalService", "BeginApproval"));
        let (s, meth) = m.labels("/grpc.health.v1.Health/Check");
        assert_eq!((&*s, &*meth), ("grpc.health.v1.Health", "Check"));
        let (s, meth) = m.labels("/sigil.v1.ApprovalService/Invented");
        assert_eq!((&*s, &*meth), (UNKNOWN, UNKNOWN));
    }

    #[test]
    fn status_codes_have_their_canonical_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("7"));
        assert_eq!(grpc_status(&h), Some(Code::PermissionDenied));
        assert_eq!(grpc_status(&http::HeaderMap::new()), None);
    }
}
