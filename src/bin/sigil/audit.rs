//! `sigil audit`: reading the audit log, verifying its hash chain and
//! signed checkpoints here, independently of the server, and archiving its
//! oldest entries to a file before the server prunes them.
//!
//! Every command reads the log a page at a time (the server ends a page
//! before about 1 MiB), so none holds more than a page and its running
//! state, whatever the length of the log.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use sigil::audit::archive::{self, Header, Line};
use sigil::audit::{checkpoint_hash, Broken, Checkpoint, Verifier};
use sigil::store::LogEntry;
use sigil::{pb, Error};
use sigil_verify::{b64url, Jwk};

use crate::conn::Conn;
use crate::rpc::{Admin, AuditFilter};

/// Entries asked for per page: the server's size limit usually ends a
/// page first.
const PAGE: u32 = 10_000;

/// The `sigil audit` commands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Read the whole audit log and its signed checkpoints a page at a
    /// time, recompute the hash chain here, check every checkpoint
    /// signature against the audit key, and report the first entry that
    /// does not fit (exit 1). With --archive, the archive files (oldest
    /// first) and the live log are checked as one chain; without, a log
    /// whose oldest entries were archived is checked from the signed
    /// checkpoint where the live log starts.
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// Ask the server to sign a checkpoint of the current head first.
        #[arg(long)]
        checkpoint: bool,
        /// An archive written by `sigil audit archive`; repeat for each,
        /// oldest first.
        #[arg(long = "archive", value_name = "FILE")]
        archives: Vec<PathBuf>,
    },
    /// Print audit entries (optionally of one user / time range) as JSON lines.
    Read {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value_t = 0)]
        from: i64,
        #[arg(long, default_value_t = 0)]
        to: i64,
    },
    /// Write the oldest entries of the audit log to a new file, cut at a
    /// checkpoint the server signs there, check them on the way, sync the
    /// file, then have the server prune them. By default everything up to
    /// the current head is archived.
    Archive {
        #[command(flatten)]
        conn: Conn,
        /// The archive file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Archive the entries up to this sequence number.
        #[arg(long, value_name = "SEQ", conflicts_with = "keep")]
        up_to: Option<u64>,
        /// Keep this many of the newest entries in the live log.
        #[arg(long, value_name = "N")]
        keep: Option<u64>,
    },
}

/// Runs a `sigil audit` command.
pub async fn run(cmd: AuditCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        AuditCmd::Read { conn, user, from, to } => read(&conn, AuditFilter { user, from, to }, config).await,
        AuditCmd::Verify {
            conn,
            checkpoint,
            archives,
        } => verify(&conn, checkpoint, &archives, config).await,
        AuditCmd::Archive { conn, out, up_to, keep } => archive(&conn, &out, up_to, keep, config).await,
    }
}

/// `sigil audit read`: prints the matching entries, one `seq json` line each.
async fn read(conn: &Conn, filter: AuditFilter, config: Option<&Path>) -> Result<(), Error> {
    let mut admin = Admin::connect(conn, config).await?;
    let mut after = 0;
    loop {
        let r = admin.read_audit(after, PAGE, &filter).await?;
        if after == 0 && r.archived_through > 0 {
            eprintln!(
                "sigil: entries 1..={} were archived; the live log starts after them",
                r.archived_through
            );
        }
        for e in &r.entries {
            println!("{} {}", e.seq, String::from_utf8_lossy(&e.raw));
        }
        if r.next_after_seq == after {
            return Ok(());
        }
        after = r.next_after_seq;
    }
}

/// A chain that does not verify, as the command's error.
fn broken((seq, why): Broken) -> Error {
    Error::Internal(format!("audit log BROKEN at entry {seq}: {why}"))
}

fn checkpoint_of(c: pb::AuditCheckpoint) -> Checkpoint {
    Checkpoint {
        v: 1,
        seq: c.seq,
        hash: c.hash,
        at: c.at,
        kid: c.kid,
        signature: c.signature,
    }
}

fn log_entry(e: pb::AuditRecord) -> Result<LogEntry, Error> {
    let hash: [u8; 32] = e
        .chain_hash
        .as_slice()
        .try_into()
        .map_err(|_| Error::Internal(format!("entry {} has a malformed chain hash", e.seq)))?;
    Ok(LogEntry {
        seq: e.seq,
        hash,
        value: e.raw,
    })
}

/// What the server says of its live log: the audit key, the signed
/// checkpoints, where the log starts, and the deployment.
struct Live {
    key: Jwk,
    checkpoints: Vec<Checkpoint>,
    anchor: Option<(Checkpoint, [u8; 32])>,
    deployment: String,
}

impl Live {
    async fn fetch(admin: &mut Admin) -> Result<Live, Error> {
        let r = admin.audit_checkpoints().await?;
        let key: Jwk = serde_json::from_str(&r.audit_key_jwk_json)
            .map_err(|e| Error::Internal(format!("audit key unreadable: {e}")))?;
        let anchor = match r.anchor {
            Some(a) => {
                let c = a
                    .checkpoint
                    .map(checkpoint_of)
                    .ok_or_else(|| Error::Internal("the server's audit anchor has no checkpoint".into()))?;
                let hash: [u8; 32] = a
                    .chain_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Internal("the server's audit anchor has a malformed hash".into()))?;
                Some((c, hash))
            }
            None => None,
        };
        Ok(Live {
            key,
            checkpoints: r.checkpoints.into_iter().map(checkpoint_of).collect(),
            anchor,
            deployment: r.deployment_id,
        })
    }

    /// The last archived entry (0: none).
    fn archived_through(&self) -> u64 {
        self.anchor.as_ref().map_or(0, |(c, _)| c.seq)
    }

    /// A verifier of the live log on its own: from its start, or from the
    /// signed checkpoint of its anchor.
    fn verifier(&self) -> Result<Verifier, Error> {
        match &self.anchor {
            Some((c, hash)) => {
                if checkpoint_hash(c) != Some(*hash) {
                    return Err(broken((c.seq, "the anchor's hash is not its checkpoint's".into())));
                }
                Verifier::from_checkpoint(&self.key, c).map_err(broken)
            }
            None => Ok(Verifier::new(&self.key)),
        }
    }
}

/// `sigil audit verify`: checks the archives given (oldest first) and then
/// the live log, a page at a time, as one chain, with every signed
/// checkpoint; a log that does not verify is an error naming the first
/// entry that does not fit.
async fn verify(conn: &Conn, checkpoint: bool, archives: &[PathBuf], config: Option<&Path>) -> Result<(), Error> {
    let mut admin = Admin::connect(conn, config).await?;
    if checkpoint {
        admin.checkpoint_audit(0).await?;
    }
    let live = Live::fetch(&mut admin).await?;
    let mut notes = Vec::new();
    let mut chain: Option<Verifier> = None;
    for path in archives {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::invalid("archive", format!("cannot open {name}: {e}")))?;
        let mut r = BufReader::new(file);
        let h = archive::read_header(&mut r, &name).map_err(|m| Error::invalid("archive", m))?;
        if chain.is_none() {
            if h.after_seq > 0 {
                notes.push(format!(
                    "entries 1..={} archived before {name}, not checked here; chain from the signed checkpoint at {}",
                    h.after_seq, h.after_seq
                ));
            }
            chain = Some(archive::first_verifier(&h, &live.key, &name).map_err(broken)?);
        }
        let Some(v) = chain.as_mut() else { continue };
        archive::verify_archive(&h, r, &name, v, &live.deployment).map_err(broken)?;
        notes.push(format!(
            "{name}: entries {}..={} chain and match their signed checkpoints",
            h.after_seq + 1,
            h.through_seq
        ));
    }
    let mut v = match chain {
        Some(v) => {
            // The live log must go on where the archives end.
            let (last, prev) = v.position();
            let anchored = live.archived_through();
            if anchored > last {
                return Err(broken((
                    last + 1,
                    format!(
                        "entries {}..={anchored} were archived (the live log starts after {anchored}) but no \
                         archive given holds them: is an archive missing?",
                        last + 1
                    ),
                )));
            }
            if let Some((c, hash)) = &live.anchor {
                if c.seq == last && *hash != prev {
                    return Err(broken((
                        last,
                        "the live log's anchor has another chain hash than the archives".into(),
                    )));
                }
            }
            v
        }
        None => {
            if let Some((c, _)) = &live.anchor {
                notes.push(format!(
                    "entries 1..={} archived, not checked here; chain from the signed checkpoint at {}",
                    c.seq, c.seq
                ));
            }
            live.verifier()?
        }
    };
    for c in &live.checkpoints {
        if c.seq > v.position().0 {
            v.checkpoint(c).map_err(broken)?;
        }
    }
    let mut after = v.position().0;
    loop {
        let r = admin.read_audit(after, PAGE, &AuditFilter::default()).await?;
        for e in r.entries {
            v.entry(&log_entry(e)?).map_err(broken)?;
        }
        if r.next_after_seq == after {
            break;
        }
        after = r.next_after_seq;
    }
    let report = v.finish();
    for n in notes {
        println!("{n}");
    }
    match report.first_broken {
        None => {
            println!(
                "audit log ok: {} entries, {} signed checkpoint(s) verified with key {}",
                report.entries, report.checkpoints, live.key.kid
            );
            Ok(())
        }
        Some(b) => Err(broken(b)),
    }
}

/// `sigil audit archive`: see [`AuditCmd::Archive`].
async fn archive(
    conn: &Conn,
    out: &Path,
    up_to: Option<u64>,
    keep: Option<u64>,
    config: Option<&Path>,
) -> Result<(), Error> {
    let mut admin = Admin::connect(conn, config).await?;
    let head = admin
        .checkpoint_audit(0)
        .await?
        .ok_or_else(|| Error::invalid("up_to", "the audit log is empty: nothing to archive"))?
        .seq;
    let from = Live::fetch(&mut admin).await?.archived_through();
    let cut = match (up_to, keep) {
        (Some(seq), _) => seq,
        (None, Some(n)) => head.saturating_sub(n),
        (None, None) => head,
    };
    if cut <= from || cut > head {
        return Err(Error::invalid(
            "up_to",
            format!(
                "the live audit log holds entries {}..={head}: cut within it (entries up to {from} are archived already)",
                from + 1
            ),
        ));
    }
    let signed = admin
        .checkpoint_audit(cut)
        .await?
        .map(checkpoint_of)
        .ok_or_else(|| Error::Internal(format!("the server signed no checkpoint at entry {cut}")))?;
    let cut_hash = checkpoint_hash(&signed)
        .ok_or_else(|| Error::Internal(format!("the checkpoint at entry {cut} is malformed")))?;
    // Fetched again: the checkpoints now include the cut's.
    let live = Live::fetch(&mut admin).await?;
    if live.archived_through() != from {
        return Err(Error::Conflict(
            "another archive was cut meanwhile; nothing was written, try again".into(),
        ));
    }
    let header = Header {
        format: archive::FORMAT.into(),
        deployment_id: live.deployment.clone(),
        created_at: crate::unix_now()?,
        after_seq: from,
        after_hash: b64url::encode(&live.anchor.as_ref().map_or([0u8; 32], |(_, h)| *h)),
        after_checkpoint: live.anchor.as_ref().map(|(c, _)| c.clone()),
        through_seq: cut,
        through_hash: signed.hash.clone(),
        checkpoint: signed,
        entries: cut - from,
        audit_key: live.key.clone(),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| {
            Error::invalid(
                "out",
                format!("cannot create {} (it must not exist): {e}", out.display()),
            )
        })?;
    let written = write_archive(&mut admin, &live, &header, &file).await;
    let checkpoints = match written {
        Ok(n) => n,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(out);
            return Err(e);
        }
    };
    let io = |e: std::io::Error| Error::Unavailable(format!("cannot sync {}: {e}", out.display()));
    file.sync_all().map_err(io)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    let pruned = admin.prune_audit(cut, &cut_hash).await?;
    println!(
        "archived audit entries {}..={cut} ({} entries, {checkpoints} signed checkpoint(s)) to {}; the server \
         pruned {} and its live log now starts after entry {cut}",
        from + 1,
        cut - from,
        out.display(),
        pruned.pruned
    );
    Ok(())
}

/// Writes the archive of `header`'s range to `file`, reading the live log
/// a page at a time and checking the chain and its checkpoints on the way
/// (nothing broken is archived). Returns the checkpoints written.
async fn write_archive(admin: &mut Admin, live: &Live, header: &Header, file: &File) -> Result<usize, Error> {
    let (from, cut) = (header.after_seq, header.through_seq);
    let mut v = live.verifier()?;
    let in_range: BTreeMap<u64, Checkpoint> = live
        .checkpoints
        .iter()
        .filter(|c| c.seq > from && c.seq <= cut)
        .map(|c| (c.seq, c.clone()))
        .collect();
    for c in in_range.values() {
        v.checkpoint(c).map_err(broken)?;
    }
    let mut w = BufWriter::new(file);
    json_line(&mut w, header)?;
    let mut after = from;
    while after < cut {
        let r = admin.read_audit(after, PAGE, &AuditFilter::default()).await?;
        for rec in r.entries {
            let e = log_entry(rec)?;
            if e.seq > cut {
                break;
            }
            v.entry(&e).map_err(broken)?;
            json_line(&mut w, &Line::entry(&e).map_err(broken)?)?;
            if let Some(c) = in_range.get(&e.seq) {
                json_line(&mut w, &Line::Checkpoint { checkpoint: c.clone() })?;
            }
        }
        if r.next_after_seq == after {
            break;
        }
        after = r.next_after_seq;
    }
    let (end, hash) = v.position();
    if end != cut || checkpoint_hash(&header.checkpoint) != Some(hash) {
        return Err(Error::Internal(format!(
            "the live log ended at entry {end} before the cut {cut}; nothing was archived"
        )));
    }
    w.flush()
        .map_err(|e| Error::Unavailable(format!("cannot write the archive: {e}")))?;
    Ok(in_range.len())
}

/// Writes `value` as one line of JSON.
fn json_line<T: serde::Serialize>(w: &mut impl Write, value: &T) -> Result<(), Error> {
    serde_json::to_writer(&mut *w, value)
        .map_err(std::io::Error::other)
        .and_then(|_| w.write_all(b"\n"))
        .map_err(|e| Error::Unavailable(format!("cannot write the archive: {e}")))
}
