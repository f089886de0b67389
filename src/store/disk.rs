//! The file-system calls of the embedded store's durable path.
//!
//! The write-ahead log and the store's marker file reach the disk only
//! through [`Disk`], so that a test can put a disk with a volatile cache
//! under them (`sim`): writes not yet synced may be lost, torn at any
//! 512-byte boundary or persisted out of order, and a power cut can be
//! taken after any call. [`OsDisk`] is the real file system.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A file open for writing.
pub(crate) trait DiskFile: Send + Sync {
    /// Writes all of `buf` at `pos` (not yet durable).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes every write so far durable, with the file's size
    /// (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// Directory and file operations. Names created, renamed or removed are
/// durable only after [`Disk::sync_dir`] of their directory.
pub(crate) trait Disk: Send + Sync {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Creates a file: a new one that must not exist (`new`), or else
    /// truncates an existing one.
    fn create(&self, path: &Path, new: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// Opens an existing file for writing.
    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Renames a file (replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OsDisk;

struct OsFile(File);

impl DiskFile for OsFile {
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create(&self, path: &Path, new: bool) -> io::Result<Arc<dyn DiskFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(new)
            .create(!new)
            .truncate(!new)
            .open(path)?;
        Ok(Arc::new(OsFile(f)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(OsFile(OpenOptions::new().write(true).open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Makes every file and directory under `dir` durable (`fsync` each file,
/// then each directory, deepest first), skipping the entries of `skip`.
/// Used as the barrier after sled's own flush, which on Linux only starts
/// write-back (`sync_file_range`) and makes neither the drive's cache nor
/// the files' sizes durable.
/// Files sled deletes meanwhile (its own threads remove blobs) are skipped.
pub(crate) fn fsync_tree(dir: &Path, skip: &[&str]) -> io::Result<()> {
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| skip.contains(&n)) {
            continue;
        }
        let Ok(ty) = entry.file_type() else { continue };
        if ty.is_dir() {
            gone(fsync_tree(&entry.path(), &[]))?;
        } else if ty.is_file() {
            gone(File::open(entry.path()).and_then(|f| f.sync_all()))?;
        }
    }
    gone(File::open(dir).and_then(|d| d.sync_all()))
}
