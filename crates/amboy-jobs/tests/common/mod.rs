//! Helpers the tests of real processes share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh directory for one test, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named after `test`.
    pub(crate) fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "amboy-jobs-{}-{test}-{}",
            std::process::id(),
            amboy_core::Base::new().id()
        ));
        std::fs::create_dir_all(&path).expect("make a temporary directory");
        TempDir(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `sh -c` script that starts `sleep 30` in the background, writes the shell's PID and the
/// sleeper's to `pids` (atomically, through a rename), and waits for the sleeper: a command
/// whose grandchild outlives it unless its whole process group is killed.
pub(crate) fn sleeper_script(pids: &Path) -> String {
    let pids = pids.display();
    format!("sleep 30 & echo $$ $! > '{pids}.tmp' && mv '{pids}.tmp' '{pids}'; wait")
}

/// Waits until `path` exists, for at most `within`.
pub(crate) async fn wait_for_file(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {within:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The PIDs written by [`sleeper_script`].
pub(crate) fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .expect("read the PIDs")
        .split_whitespace()
        .map(|pid| pid.parse().expect("a PID"))
        .collect()
}

/// Whether process `pid` is gone: it does not exist, or it died and waits to be reaped.
pub(crate) fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) if Path::new("/proc/self/stat").exists() => true,
        Err(_) => {
            let pid = rustix::process::Pid::from_raw(pid).expect("a positive PID");
            rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
        }
    }
}

/// Asserts that every process in `pids` is gone, or goes within `within` (a killed process
/// takes a moment to die).
pub(crate) async fn assert_gone(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    for &pid in pids {
        while !is_gone(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} is still running {within:?} after its job stopped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
