//! Writing files the ways the daemon and the watcher meet them in production:
//! plainly, as an editor saves (write beside, rename over), and as git-sync
//! and the Kubernetes atomic writer publish (swap a symlink).

use std::path::Path;

/// Writes `text` to `path`, creating its parent folders.
pub fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir -p");
    }
    std::fs::write(path, text).expect("write");
}

/// Replaces `path` the way editors save: write a temporary file in the same
/// folder, then rename it over the original.
pub fn atomic_save(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// Points `link` at `target` atomically, as git-sync and the Kubernetes atomic
/// writer do: create a new symlink, rename it over the old one.
pub fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_file_name(format!(
        "{}.tmp-link",
        link.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename link over");
}
