//! Where client commands connect: the `--server`/`--ca`/`--cert`/`--key`
//! flags, the `--config` file's `[client]` section, `SIGIL_URL` and the
//! development defaults, resolved into one [`Target`]; and the
//! confirmation destructive commands ask for.
use std::path::{Path, PathBuf};

use clap::Args;
use sigil::client::{connect, ClientTls};
use sigil::config::Config;
use sigil::Error;
use tonic::transport::Channel;

/// Where a client command connects. Each value is taken from, in order:
/// its flag; the `--config` file (`[client]`, the URL defaulting to
/// `https://` + `[server] listen`); `SIGIL_URL` for the URL; the
/// development defaults of `make certs`. A `SIGIL_URL` that names another
/// server than the `--config` file is refused as ambiguous.
#[derive(Args)]
pub struct Conn {
    /// Server URL (default: from --config, else SIGIL_URL, else https://127.0.0.1:50051).
    #[arg(long)]
    server: Option<String>,
    /// CA certificate that issued the server's certificate (default: from
    /// --config, else certs/out/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate; its URI SAN carries the role (default: from
    /// --config, else certs/out/admin.pem).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (default: from --config, else certs/out/admin.key).
    #[arg(long)]
    key: Option<PathBuf>,
}

/// A resolved connection target.
pub struct Target {
    /// The server URL.
    pub url: String,
    /// Where the URL came from, for the operator.
    source: String,
    /// CA certificate that issued the server's certificate.
    ca: PathBuf,
    /// Client certificate.
    cert: PathBuf,
    /// Client private key.
    key: PathBuf,
}

impl Conn {
    /// Resolves the target of a command run with the operator's (admin)
    /// client certificate.
    pub fn resolve(&self, config: Option<&Path>) -> Result<Target, Error> {
        self.resolve_as(config, None)
    }

    /// [`Conn::resolve`], with the client certificate of `role` from
    /// `certs/out/` unless `--cert`/`--key` are given (enrollment is the
    /// frontend's; an operator's admin certificate may not enroll).
    pub fn resolve_as(&self, config: Option<&Path>, role: Option<&str>) -> Result<Target, Error> {
        let cfg = match config {
            Some(p) => Some(Config::load_client(p)?),
            None => None,
        };
        let env_url = std::env::var("SIGIL_URL").ok().filter(|u| !u.is_empty());
        let (url, source) = match (&self.server, &cfg, env_url) {
            (Some(u), _, _) => (u.clone(), "--server".to_string()),
            (None, Some(c), env) => {
                let u = c.client_url();
                let file = config.map(|p| p.display().to_string()).unwrap_or_default();
                if let Some(e) = env.filter(|e| *e != u) {
                    return Err(Error::invalid(
                        "server",
                        format!("SIGIL_URL names {e} but {file} names {u}; pass --server to say which one"),
                    ));
                }
                (u, format!("from {file}"))
            }
            (None, None, Some(e)) => (e, "from SIGIL_URL".to_string()),
            (None, None, None) => (
                "https://127.0.0.1:50051".to_string(),
                "the development default; pass --config or --server".to_string(),
            ),
        };
        let client = cfg.map(|c| c.client).unwrap_or_default();
        let (cert, key) = match role {
            Some(r) => (
                PathBuf::from(format!("certs/out/{r}.pem")),
                PathBuf::from(format!("certs/out/{r}.key")),
            ),
            None => (client.cert, client.key),
        };
        Ok(Target {
            url,
            source,
            ca: self.ca.clone().unwrap_or(client.ca),
            cert: self.cert.clone().unwrap_or(cert),
            key: self.key.clone().unwrap_or(key),
        })
    }
}

impl Target {
    /// Opens the mTLS channel, saying on stderr which server it is.
    pub async fn open(self) -> Result<Channel, Error> {
        eprintln!("sigil: server {} ({})", self.url, self.source);
        connect(
            &self.url,
            &ClientTls {
                ca: &self.ca,
                cert: &self.cert,
                key: &self.key,
            },
        )
        .await
    }
}

/// Asks for confirmation of a destructive action on `target`: `--yes`, or
/// typing the target's name at a terminal. Refuses otherwise.
pub fn confirm(action: &str, target: &str, yes: bool) -> Result<(), Error> {
    eprintln!("sigil: about to {action} on {target}");
    if yes {
        return Ok(());
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(
            "yes",
            format!("refusing to {action} on {target} without confirmation: add --yes"),
        ));
    }
    eprint!("type {target} to confirm: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::invalid("yes", format!("cannot read the confirmation: {e}")))?;
    if line.trim() != target {
        return Err(Error::invalid("yes", "confirmation did not match; nothing was done"));
    }
    Ok(())
}
