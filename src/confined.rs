//! Reading files whose names come from untrusted input: the manifests found
//! under the manifest directory, the `!File` keys they reference, a saved plan
//! file.
//!
//! - [`Confined`] is a directory the operator named, opened once as a handle
//!   (cap-std's [`cap_std::fs::Dir`]: `openat2` with `RESOLVE_BENEATH` on
//!   Linux, a component-by-component walk elsewhere). Every path is opened
//!   beneath that handle: no `..`, no absolute path and no symlink leads out
//!   of it, however the directory changes between two calls (a folder swapped
//!   for a symlink to elsewhere). Relative symlinks that stay inside are
//!   followed, as the Kubernetes volume layout (`..data`) and git-sync's
//!   revision folders need.
//! - What is checked (the kind of file, its size, its identity) is checked on
//!   the opened descriptor, and that same descriptor is read: nothing is
//!   looked up twice by name, so nothing can change between a check and a read.
//! - Files are opened without blocking ([`read_regular`] too): a FIFO, a
//!   terminal or a device named where a file is expected is refused instead of
//!   hanging the read, and a read stops at its limit plus one byte, whatever
//!   the file's size said when it was opened.
//!
//! Traps:
//! - The directory itself is opened by the name the operator gave, symlinks
//!   followed: the operator's path is trusted, what lies beneath it is not.
//! - A symlink with an absolute target is never followed beneath a handle,
//!   even one that points back inside: write links inside the directory as
//!   relative ones (git-sync and the kubelet do).
//! - cap-std reports a way out as `PermissionDenied` without an OS error code
//!   ([`is_escape`]); a real `EACCES` carries one.

use std::ffi::OsString;
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};

/// A file's identity: its device and inode. Every name of one file (a hard
/// link, a symlink, another mount of the folder) has the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    /// The identity of what `path` names now, symlinks followed.
    pub(crate) fn of_path(path: &Path) -> io::Result<Identity> {
        let meta = std::fs::metadata(path)?;
        Ok(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn of_cap(meta: &cap_std::fs::Metadata) -> Identity {
        use cap_std::fs::MetadataExt as _;
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The path leads out of the directory (by `..`, an absolute path or a
    /// symlink), whether or not anything exists where it leads.
    Outside,
    /// Not a regular file: a folder, a FIFO, a device, a socket.
    NotRegular,
    /// Larger than the limit: the size seen, at least the limit plus one.
    TooLarge(u64),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        if is_escape(&err) {
            ReadError::Outside
        } else {
            ReadError::Io(err)
        }
    }
}

/// A file read whole, with the identity of what was read.
#[derive(Debug)]
pub(crate) struct ReadFile {
    pub(crate) bytes: Vec<u8>,
    pub(crate) identity: Identity,
}

/// What a path beneath a [`Confined`] directory names, symlinks followed.
#[derive(Debug)]
pub(crate) enum Entry {
    Folder(Identity),
    /// Anything else (read it with [`Confined::read`] to know more).
    Other,
}

/// A directory every path is opened beneath (see the module docs).
#[derive(Debug)]
pub(crate) struct Confined {
    dir: Dir,
}

impl Confined {
    /// Opens the directory the operator named (symlinks on the way followed).
    pub(crate) fn open(path: &Path) -> io::Result<Confined> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Confined { dir })
    }

    /// The identity of the directory itself.
    pub(crate) fn identity(&self) -> io::Result<Identity> {
        Ok(Identity::of_cap(&self.dir.dir_metadata()?))
    }

    /// The names in the folder `rel` (empty: the directory itself), unsorted.
    pub(crate) fn names(&self, rel: &Path) -> Result<Vec<io::Result<OsString>>, ReadError> {
        let entries = if rel.as_os_str().is_empty() {
            self.dir.entries()?
        } else {
            self.dir.read_dir(rel)?
        };
        Ok(entries.map(|e| e.map(|e| e.file_name())).collect())
    }

    /// What `rel` names, its symlinks followed as far as they stay inside.
    pub(crate) fn entry(&self, rel: &Path) -> Result<Entry, ReadError> {
        let meta = self.dir.metadata(rel)?;
        Ok(if meta.is_dir() {
            Entry::Folder(Identity::of_cap(&meta))
        } else {
            Entry::Other
        })
    }

    /// Reads the regular file `rel`, at most `limit` bytes: opened once,
    /// beneath the directory, checked and read through that one descriptor.
    pub(crate) fn read(&self, rel: &Path, limit: u64) -> Result<ReadFile, ReadError> {
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(NO_WAIT);
        let file = self.dir.open_with(rel, &options)?.into_std();
        read_opened(file, limit)
    }
}

/// Flags of every open here: a FIFO with no writer or a terminal would
/// otherwise block `open` itself, before the kind of file can be checked.
const NO_WAIT: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// Reads the regular file at `path` (a path the operator gave, symlinks
/// followed), at most `limit` bytes. A FIFO, a terminal or `/dev/stdin` on a
/// pipe is refused at once rather than read until it ends.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<ReadFile, ReadError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(NO_WAIT)
        .open(path)
        .map_err(ReadError::Io)?;
    read_opened(file, limit)
}

fn read_opened(file: std::fs::File, limit: u64) -> Result<ReadFile, ReadError> {
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let identity = Identity {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    // Not trusting the size seen: the file may grow while it is read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    Ok(ReadFile { bytes, identity })
}

/// Whether cap-std refused `err`'s path for leading out of the directory.
pub(crate) fn is_escape(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied && err.raw_os_error().is_none()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> (tempfile::TempDir, Confined) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("root/sub/key"), "inside").unwrap();
        std::fs::write(dir.path().join("outside/key"), "outside").unwrap();
        let confined = Confined::open(&dir.path().join("root")).unwrap();
        (dir, confined)
    }

    fn read(c: &Confined, rel: &str) -> Result<Vec<u8>, ReadError> {
        c.read(Path::new(rel), 100).map(|r| r.bytes)
    }

    #[test]
    fn inside_paths_are_read_and_ways_out_are_refused_alike() {
        let (dir, c) = tree();
        assert_eq!(read(&c, "sub/key").unwrap(), b"inside");
        assert_eq!(read(&c, "sub/../sub/key").unwrap(), b"inside");
        symlink("sub/key", dir.path().join("root/link")).unwrap();
        assert_eq!(read(&c, "link").unwrap(), b"inside");
        symlink("../outside", dir.path().join("root/out")).unwrap();
        symlink(dir.path().join("outside"), dir.path().join("root/abs")).unwrap();
        // The same refusal whether or not the file exists out there.
        for rel in [
            "../outside/key",
            "out/key",
            "out/missing",
            "abs/key",
            "abs/missing",
        ] {
            assert!(
                matches!(read(&c, rel), Err(ReadError::Outside)),
                "{rel}: {:?}",
                read(&c, rel)
            );
        }
        assert!(matches!(
            read(&c, "sub/missing"),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
        assert!(matches!(c.entry(Path::new("out")), Err(ReadError::Outside)));
        assert!(matches!(
            c.entry(Path::new("sub")),
            Ok(Entry::Folder(id)) if id == Identity::of_path(&dir.path().join("root/sub")).unwrap()
        ));
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let (dir, c) = tree();
        assert!(matches!(read(&c, "sub"), Err(ReadError::NotRegular)));
        let fifo = dir.path().join("root/fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(matches!(read(&c, "fifo"), Err(ReadError::NotRegular)));
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(ReadError::NotRegular)
        ));
        std::fs::write(dir.path().join("root/big"), [b'x'; 101]).unwrap();
        assert!(matches!(read(&c, "big"), Err(ReadError::TooLarge(101))));
        std::fs::write(dir.path().join("root/full"), [b'x'; 100]).unwrap();
        assert_eq!(read(&c, "full").unwrap().len(), 100);
        let same = c.read(Path::new("full"), 100).unwrap().identity;
        assert_eq!(
            same,
            Identity::of_path(&dir.path().join("root/full")).unwrap()
        );
    }

    #[test]
    fn a_file_growing_past_the_limit_after_the_size_check_is_cut_off() {
        // The size is checked on the descriptor, then at most limit + 1
        // bytes are read from it: an endless file never fills memory.
        // A procfs file reports size 0, then produces content.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert!(matches!(read_opened(file, 8), Err(ReadError::TooLarge(9))));
    }

    #[test]
    fn a_real_permission_error_is_not_an_escape() {
        assert!(!is_escape(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(is_escape(&io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a path led outside of the filesystem"
        )));
    }
}
