//! Connecting to endpoints and making unary calls with etcdctl's timeouts.
//!
//! Endpoints are given as etcdctl takes them (`127.0.0.1:2379` or
//! `http://127.0.0.1:2379`). Dialing is bounded by `--dial-timeout` and a
//! failure to reach any endpoint exits with code 2; each request is bounded
//! by `--command-timeout` and reports Go's "context deadline exceeded" when
//! it runs out.

use std::future::Future;
use std::time::Duration;

use quorate_proto::etcdserverpb::cluster_client::ClusterClient;
use quorate_proto::etcdserverpb::kv_client::KvClient;
use quorate_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

use crate::exit::CtlError;

/// Connection settings from the global flags.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
}

/// etcdctl raises the receive limit to 2 GiB - 1 (`math.MaxInt32`).
const MAX_RECV_MSG_SIZE: usize = i32::MAX as usize;

/// The URI tonic dials for an etcdctl-style endpoint.
pub fn endpoint_uri(ep: &str) -> Result<String, CtlError> {
    if let Some(rest) = ep.strip_prefix("http://") {
        return Ok(format!("http://{rest}"));
    }
    if ep.starts_with("https://") {
        return Err(CtlError::bad_feature(format!(
            "TLS endpoints are not supported yet: {ep}"
        )));
    }
    if ep.contains("://") {
        return Err(CtlError::bad_feature(format!(
            "unsupported endpoint scheme: {ep}"
        )));
    }
    Ok(format!("http://{ep}"))
}

/// Opens a connection to one endpoint within `dial_timeout`.
pub async fn dial(ep: &str, dial_timeout: Duration) -> Result<Channel, CtlError> {
    let uri = endpoint_uri(ep)?;
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| CtlError::bad_connection(format!("invalid endpoint {ep}: {e}")))?
        .connect_timeout(dial_timeout)
        .tcp_nodelay(true);
    match tokio::time::timeout(dial_timeout, endpoint.connect()).await {
        Err(_) => Err(CtlError::bad_connection(format!(
            "failed to dial {ep}: context deadline exceeded"
        ))),
        Ok(Err(e)) => Err(CtlError::bad_connection(format!(
            "failed to dial {ep}: {}",
            error_chain(&e)
        ))),
        Ok(Ok(ch)) => Ok(ch),
    }
}

/// Connects to the first endpoint that answers, in the order given.
pub async fn dial_any(cfg: &ClientConfig) -> Result<Channel, CtlError> {
    let mut errors = Vec::new();
    for ep in &cfg.endpoints {
        match dial(ep, cfg.dial_timeout).await {
            Ok(ch) => return Ok(ch),
            // A bad scheme is the user's mistake, not a connection problem.
            Err(e) if e.code != crate::exit::BAD_CONNECTION => return Err(e),
            Err(e) => errors.push(e.message),
        }
    }
    if errors.is_empty() {
        return Err(CtlError::bad_args("no endpoints given"));
    }
    Err(CtlError::bad_connection(errors.join("; ")))
}

/// Why a dial failed, briefly: the innermost cause (`connection refused`,
/// a DNS failure, ...), without tonic's wrapper layers.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    while let Some(src) = innermost.source() {
        innermost = src;
    }
    let text = match innermost.downcast_ref::<std::io::Error>() {
        // "Connection refused (os error 111)" -> "connection refused"
        Some(io) if io.raw_os_error().is_some() => {
            let s = io.to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut chars = s.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => s,
            }
        }
        _ => innermost.to_string(),
    };
    if text.is_empty() {
        e.to_string()
    } else {
        text
    }
}

/// A request carrying the command timeout to the server (`grpc-timeout`).
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Awaits a unary call within `timeout`, mapping failures to etcdctl's text.
pub async fn unary<T, F>(timeout: Duration, call: F) -> Result<T, CtlError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(CtlError::deadline_exceeded()),
        Ok(Err(status)) => Err(status.into()),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}

pub fn kv(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(MAX_RECV_MSG_SIZE)
}

pub fn maintenance(ch: Channel) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(ch).max_decoding_message_size(MAX_RECV_MSG_SIZE)
}

pub fn cluster(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch).max_decoding_message_size(MAX_RECV_MSG_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_with_and_without_scheme() {
        assert_eq!(
            endpoint_uri("127.0.0.1:2379").as_deref(),
            Ok("http://127.0.0.1:2379")
        );
        assert_eq!(
            endpoint_uri("http://127.0.0.1:2379").as_deref(),
            Ok("http://127.0.0.1:2379")
        );
        assert_eq!(
            endpoint_uri("https://127.0.0.1:2379").map_err(|e| e.code),
            Err(crate::exit::BAD_FEATURE)
        );
    }
}
