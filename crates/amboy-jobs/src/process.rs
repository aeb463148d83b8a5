//! Running a shell job's command: looked up, spawned in a process group of its own with its
//! standard output and standard error on one pipe, watched until it exits and its output
//! closes, and its whole group killed when the run stops early.

/// Runs `job`'s command in `ctx` and stores its output and exit code on the job. `Err` is the
/// reason the run failed, without the job's name (the caller adds it).
#[cfg(not(unix))]
pub(crate) async fn run(
    job: &crate::ShellJob,
    _ctx: &amboy_core::JobContext,
) -> Result<(), String> {
    job.set_result(crate::shell::RunResult::default());
    Err(format!(
        "cannot run '{}': shell jobs run only on unix",
        job.command()
    ))
}

#[cfg(unix)]
pub(crate) use unix::run;

#[cfg(unix)]
mod unix {
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{ExitStatus, Stdio};

    use amboy_core::{Job, JobContext};
    use rustix::process::{Pid, Signal};
    use tokio::io::AsyncReadExt;
    use tokio::net::unix::pipe;

    use crate::OUTPUT_LIMIT;
    use crate::output::TailBuffer;
    use crate::shell::{RunResult, ShellJob};

    /// How much of the output one read takes.
    const READ_SIZE: usize = 8 * 1024;

    /// Runs `job`'s command in `ctx`; see the module's documentation.
    pub(crate) async fn run(job: &ShellJob, ctx: &JobContext) -> Result<(), String> {
        // A run starts afresh: nothing of an earlier run's output or exit code remains.
        job.set_result(RunResult::default());
        let program = job.command();
        if ctx.is_cancelled() {
            return Err(format!("'{program}' was not started: {}", stop_reason(ctx)));
        }
        if let Some(dir) = job.working_dir() {
            check_working_dir(dir)?;
        }
        let path = find_program(program, job.env())?;

        // One pipe for both streams, as amboy's combined output: the output keeps the order in
        // which the command wrote it, and reading one pipe never waits on the other.
        let (reader, writer) =
            io::pipe().map_err(|error| format!("cannot make a pipe: {error}"))?;
        let writer_err = writer
            .try_clone()
            .map_err(|error| format!("cannot make a pipe: {error}"))?;
        let mut reader = Some(
            pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
                .map_err(|error| format!("cannot read the output: {error}"))?,
        );

        let mut command = tokio::process::Command::new(&path);
        command
            .arg0(program)
            .args(job.args())
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_err)
            .kill_on_drop(true)
            .process_group(0);
        if !job.inherit_env() {
            command.env_clear();
        }
        command.envs(job.env());
        if let Some(dir) = job.working_dir() {
            command.current_dir(dir);
        }
        let spawned = command.spawn();
        // The command holds this process's copies of the pipe's write end: closed now, so that
        // the output ends when the command's processes have closed theirs.
        drop(command);
        let mut child = spawned.map_err(|error| spawn_error(program, &path, &error))?;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        tracing::debug!(job_id = job.id(), program, pid = ?group, "started shell job");
        let mut running = Running {
            job,
            group,
            output: TailBuffer::new(OUTPUT_LIMIT),
            stored: false,
        };

        let stopped = ctx.cancelled();
        let mut stopped = std::pin::pin!(stopped);
        let mut chunk = vec![0; READ_SIZE];
        let mut reading = true;
        let mut status: Option<ExitStatus> = None;
        while reading || status.is_none() {
            tokio::select! {
                biased;
                () = &mut stopped => {
                    running.kill_group();
                    let _ = child.start_kill();
                    running.store(None);
                    return Err(format!(
                        "'{program}' was killed with its process group: {}",
                        stop_reason(ctx)
                    ));
                }
                read = read_some(&mut reader, &mut chunk), if reading => match read {
                    Ok(0) => reading = false,
                    Ok(n) => running.output.push(&chunk[..n]),
                    Err(error) => {
                        tracing::warn!(job_id = job.id(), %error, "cannot read a shell job's output");
                        // Closing the pipe lets a command blocked on writing to it go on.
                        reader = None;
                        reading = false;
                    }
                },
                exited = child.wait(), if status.is_none() => match exited {
                    Ok(exited) => status = Some(exited),
                    Err(error) => {
                        running.kill_group();
                        running.store(None);
                        return Err(format!("cannot wait for '{program}': {error}"));
                    }
                },
            }
        }
        // Every process that held the output has closed it and the command has exited:
        // nothing is left to kill.
        running.group = None;
        let status = status.unwrap_or_default();
        running.store(status.code());
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(code), _) => Err(format!("'{program}' failed: exit status {code}")),
            (None, Some(signal)) => Err(format!("'{program}' was killed by signal {signal}")),
            (None, None) => Err(format!("'{program}' failed: {status}")),
        }
    }

    /// Reads from the output pipe while it is open; a closed one reads as its end.
    async fn read_some(reader: &mut Option<pipe::Receiver>, chunk: &mut [u8]) -> io::Result<usize> {
        match reader {
            Some(reader) => reader.read(chunk).await,
            None => Ok(0),
        }
    }

    /// A started command, until its run is over: the process group to kill if the run stops
    /// early, and the output captured so far. Dropped before the run is over (the run's future
    /// was dropped), it kills the group and stores the output captured so far.
    struct Running<'a> {
        job: &'a ShellJob,
        /// The command's process group, while it may need killing.
        group: Option<Pid>,
        output: TailBuffer,
        /// Whether the output was stored on the job.
        stored: bool,
    }

    impl Running<'_> {
        /// Kills the command's process group with `SIGKILL`, once.
        fn kill_group(&mut self) {
            let Some(group) = self.group.take() else {
                return;
            };
            match rustix::process::kill_process_group(group, Signal::KILL) {
                Ok(()) => {
                    tracing::debug!(job_id = self.job.id(), pgid = ?group, "killed a shell job's process group");
                }
                // The group is gone already.
                Err(rustix::io::Errno::SRCH) => {}
                Err(error) => tracing::warn!(
                    job_id = self.job.id(),
                    pgid = ?group,
                    %error,
                    "cannot kill a shell job's process group"
                ),
            }
        }

        /// Stores the output captured and `exit_code` on the job, once.
        fn store(&mut self, exit_code: Option<i32>) {
            if std::mem::replace(&mut self.stored, true) {
                return;
            }
            let output = std::mem::replace(&mut self.output, TailBuffer::new(0));
            if output.truncated() {
                tracing::warn!(
                    job_id = self.job.id(),
                    limit = OUTPUT_LIMIT,
                    "a shell job's output was truncated to its last bytes"
                );
            }
            self.job.set_result(RunResult {
                output: output.into_text(),
                exit_code,
            });
        }
    }

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.kill_group();
            self.store(None);
        }
    }

    /// Why the run must stop, in Go's words as amboy reports them.
    fn stop_reason(ctx: &JobContext) -> &'static str {
        if ctx.token().is_cancelled() {
            "context canceled"
        } else {
            "context deadline exceeded"
        }
    }

    /// Checks that `dir` is a directory the command can run in.
    fn check_working_dir(dir: &str) -> Result<(), String> {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(format!("working directory '{dir}' is not a directory")),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(format!("working directory '{dir}' does not exist"))
            }
            Err(error) => Err(format!("working directory '{dir}' cannot be used: {error}")),
        }
    }

    /// The path to run for `program`: itself if it names a path (has a `/`), else the first
    /// executable file named `program` in the `PATH` of `env`, or of this process if `env`
    /// sets none.
    fn find_program(program: &str, env: &BTreeMap<String, String>) -> Result<PathBuf, String> {
        if program.is_empty() {
            return Err("no program to run: the command is empty".to_owned());
        }
        if program.contains('/') {
            return Ok(PathBuf::from(program));
        }
        let search = env
            .get("PATH")
            .map(OsString::from)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        std::env::split_paths(&search)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| format!("program '{program}' not found in PATH"))
    }

    fn is_executable(path: &Path) -> bool {
        std::fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    }

    /// What a failed spawn means, naming the program.
    fn spawn_error(program: &str, path: &Path, error: &io::Error) -> String {
        match error.kind() {
            io::ErrorKind::NotFound => format!("program '{program}' not found"),
            io::ErrorKind::PermissionDenied => {
                format!(
                    "program '{program}' cannot be run ({}): {error}",
                    path.display()
                )
            }
            _ => format!("cannot start '{program}': {error}"),
        }
    }
}
