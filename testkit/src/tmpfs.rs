//! A small tmpfs mounted on a data directory, for tests of a full disk. Needs
//! root, as the partition tests do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: "4m") on `dir`,
    /// created if needed.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().expect("a UTF-8 path"),
        ]);
        Tmpfs(dir.to_owned())
    }

    /// Gives it `size` in all, keeping what it holds.
    pub fn grow(&self, size: &str) {
        mount(&[
            "-o",
            &format!("remount,size={size}"),
            self.0.to_str().expect("a UTF-8 path"),
        ]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str]) {
    let status = Command::new("mount")
        .args(args)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mount {args:?} failed ({status}): this test needs root to mount a small tmpfs"
    );
}
