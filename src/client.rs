//! Connecting to Sigil as a client (CLI, examples, tests).
use std::path::Path;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::error::Error;

/// Paths of a client's TLS material.
#[derive(Debug, Clone)]
pub struct ClientTls<'a> {
    /// CA that issued the server certificate.
    pub ca: &'a Path,
    /// This client's certificate (carries its role).
    pub cert: &'a Path,
    /// This client's private key.
    pub key: &'a Path,
}

/// Opens an mTLS channel to `url` as `role`, with the files `make certs`
/// writes to `dir`: `ca.pem`, `<role>.pem` and `<role>.key`.
pub async fn connect_as(url: &str, dir: &Path, role: &str) -> Result<Channel, Error> {
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join(format!("{role}.pem")),
        dir.join(format!("{role}.key")),
    );
    connect(
        url,
        &ClientTls {
            ca: &ca,
            cert: &cert,
            key: &key,
        },
    )
    .await
}

/// Opens an mTLS channel to `url` (e.g. `https://127.0.0.1:50051`). The
/// server certificate is checked for the name `localhost` unless the URL
/// names another host.
pub async fn connect(url: &str, tls: &ClientTls<'_>) -> Result<Channel, Error> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Error::invalid("tls", format!("cannot read {}: {e}", p.display())));
    let host = url
        .trim_start_matches("https://")
        .split([':', '/'])
        .next()
        .filter(|h| !h.is_empty() && h.parse::<std::net::IpAddr>().is_err())
        .unwrap_or("localhost")
        .to_string();
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(tls.ca)?))
        .identity(Identity::from_pem(read(tls.cert)?, read(tls.key)?))
        .domain_name(host);
    Channel::from_shared(url.to_string())
        .map_err(|e| Error::invalid("url", e.to_string()))?
        .tls_config(cfg)
        .map_err(|e| Error::invalid("tls", e.to_string()))?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot connect to {url}: {e}")))
}
