//! What the load generators (`examples/soak.rs`, `examples/loadgen.rs`)
//! share: starting a release `sigild` of their own in a temp dir, looking
//! at it through `/proc` and its metrics, and printing the machine.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}

/// A small, fast generator for choosing operations (not for secrets).
pub struct Pick(u64);

impl Pick {
    pub fn new() -> Pick {
        Pick(u64::from_le_bytes(random::<8>()) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn cmd_out(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!("? ({program} failed: {})", o.status),
        Err(e) => format!("? ({program}: {e})"),
    }
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ----- the daemon ----------------------------------------------------------

/// A sigild's directory: certificates, SoftHSM token, config and store,
/// made by [`prepare`]; the PINs stay in memory and reach sigild through
/// its environment only.
pub struct Setup {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub metrics: SocketAddr,
    pin: String,
    so_pin: String,
}

/// A running sigild; killed if still running when dropped.
pub struct Daemon {
    pub child: Child,
    pub pid: u32,
    pub url: String,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub certs: PathBuf,
    pub log: PathBuf,
    /// From spawning the process to its "listening" line.
    pub started_in: Duration,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Stops sigild with SIGTERM and waits for it; true for a clean exit.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The release binaries beside this example (`target/release/`).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release --bins`, as `make soak` and `make bench` do)",
        bin.display()
    );
    bin
}

/// Environment of `sigil hsm init` and `sigild` for the run's directory.
fn daemon_env(cmd: &mut Command, dir: &Path, pin: &str, so_pin: &str) {
    let certs = dir.join("certs");
    cmd.current_dir(dir)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .env("SIGIL_HSM_PIN", pin)
        .env("SIGIL_HSM_SO_PIN", so_pin)
        .env("SIGIL_CONFIG", dir.join("sigil.toml"))
        .env("SIGIL_STORE_PATH", dir.join("data/sled"))
        .env("SIGIL_TLS_CERT", certs.join("server.pem"))
        .env("SIGIL_TLS_KEY", certs.join("server.key"))
        .env("SIGIL_CLIENT_CA", certs.join("ca.pem"))
        .env("NO_COLOR", "1")
        .env_remove("SIGIL_DENY_LIST")
        .env_remove("SIGIL_METRICS_LISTEN")
        .env_remove("SIGIL_LOG_FORMAT");
}

/// Makes `dir` ready for a sigild: development PKI (`certs/gen.sh`), a
/// SoftHSM token `token_label` with a random PIN and its keys (`sigil hsm
/// init`), and a config with `[metrics] listen` on a free loopback port
/// followed by `config` (TOML sections of the caller's).
pub fn prepare(dir: &Path, token_label: &str, config: &str) -> Setup {
    let certs = dir.join("certs");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen.sh"))
        .arg("--force")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "certs/gen.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    sigil_hsm::write_softhsm_conf(&dir.join("softhsm2.conf"), &dir.join("tokens")).unwrap();
    let metrics = free_addr();
    std::fs::write(
        dir.join("sigil.toml"),
        format!("version = 1\n[hsm]\ntoken_label = \"{token_label}\"\n[metrics]\nlisten = \"{metrics}\"\n{config}"),
    )
    .unwrap();
    let hex = |b: [u8; 12]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (pin, so_pin) = (hex(random()), hex(random()));
    let mut init = Command::new(release_bin("sigil"));
    daemon_env(&mut init, dir, &pin, &so_pin);
    let out = init.args(["hsm", "init"]).env("RUST_LOG", "warn").output().unwrap();
    assert!(
        out.status.success(),
        "sigil hsm init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Setup {
        dir: dir.to_path_buf(),
        certs,
        metrics,
        pin,
        so_pin,
    }
}

impl Setup {
    /// Writes the token's PINs into `pin` and `so-pin` (mode 0600) in the
    /// run's directory: only for a directory kept to start sigild on by hand.
    pub fn write_pins(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        for (name, pin) in [("pin", &self.pin), ("so-pin", &self.so_pin)] {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(name))
                .unwrap();
            std::io::Write::write_all(&mut f, pin.as_bytes()).unwrap();
        }
    }

    /// The user PIN of the token (for a PKCS#11 session of the caller's own).
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Starts `target/release/sigild` on a free loopback port and waits for
    /// its "listening" line.
    pub fn start(&self) -> Daemon {
        let dir = &self.dir;
        let listen = free_addr();
        let log = dir.join("sigild.log");
        let mut cmd = Command::new(release_bin("sigild"));
        daemon_env(&mut cmd, dir, &self.pin, &self.so_pin);
        let t0 = std::time::Instant::now();
        let mut child = cmd
            .env("SIGIL_LISTEN", listen.to_string())
            // `BENCH_SIGILD_LOG` (a `RUST_LOG` filter) for a closer look.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SIGILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let started_in = t0.elapsed();
        assert!(
            line.contains("listening on https://"),
            "sigild said {line:?}; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::spawn(move || for _ in stdout.lines().map_while(Result::ok) {});
        Daemon {
            pid: child.id(),
            child,
            url: format!("https://{listen}"),
            listen,
            metrics: self.metrics,
            certs: self.certs.clone(),
            log,
            started_in,
        }
    }
}

/// sigild's CPU time so far (user + system, all threads), from
/// `/proc/<pid>/stat`, in microseconds.
pub fn cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1_000_000 / clock_ticks()
}

/// The calling thread's CPU time so far, in microseconds.
pub fn thread_cpu_micros() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1_000_000 / clock_ticks()
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| cmd_out("getconf", &["CLK_TCK"]).parse().unwrap_or(100))
}

/// The machine and versions, as a markdown table.
pub fn machine_table(daemon_pid: u32) -> String {
    format!(
        "| | |\n|---|---|\n| CPU | {}, `nproc` = {} |\n| kernel | {} |\n| rustc | {} |\n| SoftHSM | {} |\n\
         | sigild | {} (release), pid {} |\n| load average at start | {} |\n",
        cpu_model(),
        cmd_out("nproc", &[]),
        cmd_out("uname", &["-r"]),
        cmd_out("rustc", &["--version"]),
        cmd_out("dpkg-query", &["-W", "-f=${Package} ${Version}", "softhsm2"]),
        env!("CARGO_PKG_VERSION"),
        daemon_pid,
        loadavg()
    )
}

/// Bytes of the files under `dir`.
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `/metrics` as name{labels} → value (summed over labels not asked for).
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}

/// The sum of the samples of `name` whose series contains `filter`.
pub fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let n = series.split('{').next().unwrap_or_default();
            n == name && series.contains(filter)
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS:` in KiB, `Threads:`).
pub fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

pub fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

pub fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

/// A withdrawal intent of `amount` BTC to a fixed valid address.
pub fn withdrawal(user: &str, wid: &str, amount: &str) -> sigil::pb::Intent {
    sigil::pb::Intent {
        action: "withdrawal".into(),
        user_id: user.into(),
        withdrawal_id: wid.into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: amount.into(),
        destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
        memo: String::new(),
    }
}

/// The step Sigil records for a code of `step`: the newest step in the
/// window that shows the same digits (one time in a million the next
/// step's code is the same, and that step is then used up too).
pub fn recorded_step(seed: &[u8], step: u64) -> u64 {
    use sigil::factor::totp;
    if totp::code_at_step(seed, step + 1) == totp::code_at_step(seed, step) {
        step + 1
    } else {
        step
    }
}
