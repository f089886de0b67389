//! Helpers of the CLI tests: an operator's config file for a test server,
//! the `sigil` binary run without inherited settings.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::harness::*;
use crate::support::tokens::*;

/// A config file naming the test server the way an operator's would.
pub fn config_file(s: &TestServer, dir: &Path, client_section: &str) -> PathBuf {
    let certs = certs_dir();
    let port = s.url.rsplit(':').next().unwrap();
    let text = format!(
        "version = 1\n[server]\nlisten = \"0.0.0.0:{port}\"\n[store]\npath = {store:?}\n[client]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n{client_section}",
        store = s.cfg.store.path.display().to_string(),
        ca = certs.join("ca.pem").display().to_string(),
        cert = certs.join("admin.pem").display().to_string(),
        key = certs.join("admin.key").display().to_string(),
    );
    let path = dir.join(format!("sigil-{}.toml", text.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the CLI with no inherited server or config settings, stdin closed.
pub fn sigil(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sigil"));
    c.args(args)
        .env_remove("SIGIL_URL")
        .env_remove("SIGIL_CONFIG")
        .env_remove("SIGIL_LISTEN")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

/// The kids of every approval key, sorted.
pub async fn kids(s: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = list_keys(s).await.into_iter().map(|k| k.kid).collect();
    v.sort();
    v
}
