//! `sigil jwks` and `sigil health`: read-only questions to the server.
use std::path::Path;

use sigil::Error;

use crate::conn::Conn;
use crate::rpc::{Approvals, Health};

/// `sigil jwks`: prints the published approval keys (JWK Set JSON).
pub async fn jwks(conn: &Conn, config: Option<&Path>) -> Result<(), Error> {
    let jwks = Approvals::connect(conn, config).await?.approval_keys().await?;
    println!("{jwks}");
    Ok(())
}

/// `sigil health`: prints the serving status of the server's health service.
pub async fn health(conn: &Conn, config: Option<&Path>) -> Result<(), Error> {
    let status = Health::connect(conn, config).await?.check().await?;
    println!("{status:?}");
    Ok(())
}
