//! [`ShellJob`]: a command run as a job (amboy's `job.ShellJob`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::dependency::CreatesFile;
use amboy_core::{Base, Job, JobContext, JobError};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::JobsError;

/// At most this many bytes of a shell job's output are kept: the last ones, after a line
/// saying how many earlier bytes were dropped (64 KiB).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// A command run as a job (amboy's `ShellJob`, registered as `shell`, version 1).
///
/// The job runs `command` with `args` directly, with no shell in between: no quoting, no
/// globbing, no `sh -c` unless the command is `sh` itself. It records the combined standard
/// output and standard error, trimmed, in [`output`](ShellJob::output) (the last
/// [`OUTPUT_LIMIT`] bytes, saying so when more was written), and the exit status in
/// [`exit_code`](ShellJob::exit_code). A non-zero exit status, a program that cannot be found
/// or started, and a kill are each the job's error; the job completes either way.
///
/// # Environment
///
/// As in amboy, the command's environment is exactly [`env`](ShellJob::env): with an empty
/// `env` the command runs with an empty environment, not this process's. Use
/// [`with_inherited_env`](ShellJob::with_inherited_env) to start from this process's
/// environment instead, `env` overriding it. A program named without a `/` is looked up in the
/// `PATH` of `env` if it sets one, else in this process's `PATH`.
///
/// # Stopping
///
/// The command runs in a process group of its own (on unix). When the job's run stops early
/// (its context is cancelled, its `max_time` passes, or the run is dropped), the whole group is
/// killed with `SIGKILL`, so that processes the command started die with it; the kill is
/// recorded as the job's error. A run that ends normally waits until every process holding the
/// output open has closed it, as amboy's does; processes that left the group and closed
/// their output are not waited for.
///
/// Running the job needs a Tokio runtime with I/O enabled (as `#[tokio::main]` builds), as
/// `tokio::process` does. On other platforms than unix the job type exists (it can be stored
/// and decoded) but running it is an error.
///
/// # Stored form
///
/// The job's fields are `command`, `args`, `env`, `inherit_env`, `working_dir` (`null` when
/// unset), `output`, `exit_code` (`null` until the command exits with a status) and
/// `job_base` (the [`Base`], nested under amboy's key). A document written by amboy (Go), whose
/// `command` is a whole command line and which has no `args`, decodes as amboy runs it: the
/// command line split on single spaces.
///
/// ```
/// use amboy_core::{Job, run_job};
/// use amboy_jobs::ShellJob;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let job = ShellJob::new("env", [] as [&str; 0]).with_env("MSG", "foo");
/// run_job(&job).await.expect("env runs");
/// assert_eq!(job.output(), "MSG=foo");
/// assert_eq!(job.exit_code(), Some(0));
/// assert_eq!(job.job_type().name, "shell");
///
/// let missing = ShellJob::from_command_line(&["no-such-program-here"]).unwrap();
/// let error = run_job(&missing).await.unwrap_err();
/// assert!(error.message().contains("program 'no-such-program-here' not found"));
/// assert!(missing.status().completed);
/// # }
/// ```
#[derive(Debug)]
pub struct ShellJob {
    base: Base,
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    inherit_env: bool,
    working_dir: Option<String>,
    result: Mutex<RunResult>,
}

/// What a run of a shell job leaves: its output and exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunResult {
    /// The captured output, bounded and trimmed.
    pub(crate) output: String,
    /// The exit code, when the command exited with one.
    pub(crate) exit_code: Option<i32>,
}

impl ShellJob {
    /// A job running `command` (a program, looked up in `PATH` unless it contains a `/`) with
    /// `args`.
    ///
    /// Its ID is `shell-job-<uuid>-<program>`: amboy's `shell-job-<n>-<program>` with a
    /// time-ordered UUID (as [`Base::new`] makes) in place of amboy's per-process counter, so
    /// that jobs made by different processes (two runs of the command line, say) never share an
    /// ID; `<program>` is the program's file name, without its directory.
    pub fn new<I, S>(command: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let command = command.into();
        let program = Path::new(&command).file_name().map_or_else(
            || command.clone(),
            |name| name.to_string_lossy().into_owned(),
        );
        let id = format!("shell-job-{}-{program}", Base::new().id());
        ShellJob {
            base: Base::with_id(id),
            command,
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            inherit_env: false,
            working_dir: None,
            result: Mutex::new(RunResult::default()),
        }
    }

    /// A job running a command line: its first word is the program, the others its
    /// arguments, each taken as it is (no shell splitting or quoting). An empty command line,
    /// or an empty program, is an error.
    ///
    /// ```
    /// use amboy_jobs::ShellJob;
    ///
    /// let job = ShellJob::from_command_line(&["echo", "hi there"]).unwrap();
    /// assert_eq!(job.command(), "echo");
    /// assert_eq!(job.args(), ["hi there"]);
    /// assert!(ShellJob::from_command_line::<&str>(&[]).is_err());
    /// ```
    pub fn from_command_line<S: AsRef<str>>(command_line: &[S]) -> Result<Self, JobsError> {
        match command_line.split_first() {
            Some((program, args)) if !program.as_ref().is_empty() => Ok(ShellJob::new(
                program.as_ref(),
                args.iter().map(|arg| arg.as_ref().to_owned()),
            )),
            _ => Err(JobsError::EmptyCommand),
        }
    }

    /// With `key` set to `value` in the command's environment.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Run in `dir` instead of this process's working directory; a `dir` that is not a
    /// directory makes the run fail.
    pub fn with_working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// With this process's environment, overridden by [`env`](ShellJob::env), instead of
    /// `env` alone (amboy's rule, and the default).
    pub fn with_inherited_env(mut self) -> Self {
        self.inherit_env = true;
        self
    }

    /// With this ID instead of the generated one.
    pub fn with_id(mut self, id: impl AsRef<str>) -> Self {
        self.base.set_id(id);
        self
    }

    /// Allowed to run for at most `max_time`: past it, the command and its process group are
    /// killed.
    pub fn with_max_time(self, max_time: Duration) -> Self {
        self.base.metadata().time_info.max_time = max_time;
        self
    }

    /// Completes without running once `path` exists (amboy's `creates` argument: a
    /// [`CreatesFile`] dependency).
    pub fn with_creates(self, path: impl Into<String>) -> Self {
        self.base.set_dependency(Arc::new(CreatesFile::new(path)));
        self
    }

    /// With `base` as its metadata, ID included, in place of the generated one.
    pub fn with_base(mut self, base: Base) -> Self {
        self.base = base;
        self
    }

    /// The program.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The program's arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The variables set in the command's environment.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Whether the command starts from this process's environment (else from an empty one).
    pub fn inherit_env(&self) -> bool {
        self.inherit_env
    }

    /// The directory the command runs in, if not this process's.
    pub fn working_dir(&self) -> Option<&str> {
        self.working_dir.as_deref()
    }

    /// The output of the last run: standard output and standard error as they were written,
    /// trimmed, at most [`OUTPUT_LIMIT`] bytes of it (the last ones) after a line saying how
    /// much was dropped. Empty before the job runs.
    pub fn output(&self) -> String {
        self.result.lock().output.clone()
    }

    /// The exit code of the last run: `None` before the command exits, when it could not be
    /// started, or when it was killed by a signal.
    pub fn exit_code(&self) -> Option<i32> {
        self.result.lock().exit_code
    }

    /// Replaces what the last run left.
    pub(crate) fn set_result(&self, result: RunResult) {
        *self.result.lock() = result;
    }
}

impl Clone for ShellJob {
    /// A copy with the same ID, metadata, command and result (see [`Base`]'s `clone`).
    fn clone(&self) -> Self {
        ShellJob {
            base: self.base.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            inherit_env: self.inherit_env,
            working_dir: self.working_dir.clone(),
            result: Mutex::new(self.result.lock().clone()),
        }
    }
}

#[typetag::serde(name = "shell")]
#[async_trait]
impl Job for ShellJob {
    fn base(&self) -> &Base {
        &self.base
    }

    fn version(&self) -> i32 {
        1
    }

    /// Runs the command; see [`ShellJob`].
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        crate::process::run(self, ctx)
            .await
            .map_err(|reason| JobError::new(format!("shell job '{}': {reason}", self.id())))
    }
}

/// Refers to this module's code, registration included; see
/// [`register_builtin_jobs`](crate::register_builtin_jobs).
#[inline(never)]
pub(crate) fn link() {
    std::hint::black_box(<ShellJob as Job>::version as fn(&ShellJob) -> i32);
}

/// The stored form, written.
#[derive(Serialize)]
struct ShellJobRef<'a> {
    command: &'a str,
    args: &'a [String],
    env: &'a BTreeMap<String, String>,
    inherit_env: bool,
    working_dir: Option<&'a str>,
    output: &'a str,
    exit_code: Option<i32>,
    job_base: &'a Base,
}

/// The stored form, read: amboy's documents have no `args`, `inherit_env` nor `exit_code`, and
/// an empty `working_dir` for none.
#[derive(Deserialize)]
struct ShellJobOwned {
    command: String,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    inherit_env: bool,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    exit_code: Option<i32>,
    job_base: Base,
}

impl Serialize for ShellJob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let result = self.result.lock();
        ShellJobRef {
            command: &self.command,
            args: &self.args,
            env: &self.env,
            inherit_env: self.inherit_env,
            working_dir: self.working_dir.as_deref(),
            output: &result.output,
            exit_code: result.exit_code,
            job_base: &self.base,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ShellJob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = ShellJobOwned::deserialize(deserializer)?;
        let (command, args) = match owned.args {
            Some(args) => (owned.command, args),
            // amboy's form: the command line, split on single spaces when run.
            None => {
                let mut words = owned.command.split(' ').map(str::to_owned);
                let program = words.next().unwrap_or_default();
                (program, words.collect())
            }
        };
        Ok(ShellJob {
            base: owned.job_base,
            command,
            args,
            env: owned.env.unwrap_or_default(),
            inherit_env: owned.inherit_env,
            working_dir: owned.working_dir.filter(|dir| !dir.is_empty()),
            result: Mutex::new(RunResult {
                output: owned.output.unwrap_or_default(),
                exit_code: owned.exit_code,
            }),
        })
    }
}
