//! The `amboy` command (amboy's `cli` package, on clap): `amboy serve` runs the REST service
//! and a worker pool on an in-memory queue or, with `--database-url`, on PostgreSQL;
//! `amboy management …`, `amboy pool …` and `amboy job …` drive a running service through the
//! REST clients.
//!
//! Output is a table for people, or JSON with `--json`. Exit codes: 0 done; 1 the service
//! refused the request or could not be reached (the reason on stderr); 2 bad usage; 3 no such
//! job (or it is not running); 4 a wait ran out of time; 5 the job waited for finished with
//! errors or expired. `--service` and `--token` come from the flags or from `AMBOY_SERVICE` and
//! `AMBOY_TOKEN`.
//!
//! Depends on the REST clients (`amboy-rest`) for the client commands, and on the queues,
//! runners, retry handler, management and built-in jobs for `serve`.

mod output;
mod serve;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use amboy_core::{Error, JobInfo};
use amboy_jobs::ShellJob;
use amboy_management::{JobCursor, JobQuery, Manager, StatusFilter};
use amboy_registry::JobInterchange;
use amboy_rest::{Connection, GroupPoolClient, ManagementClient, PoolClient, QueueClient};
use clap::{Args, Parser, Subcommand};

use crate::output::{Output, Table, state_of};

/// The `amboy` command line.
#[derive(Debug, Parser)]
#[command(name = "amboy", version, about = "Run and manage amboy job queues")]
pub struct Cli {
    /// The service's URL.
    #[arg(
        long,
        global = true,
        env = "AMBOY_SERVICE",
        default_value = "http://127.0.0.1:3000"
    )]
    service: String,
    /// The service's bearer token (`serve`: the token the service requires).
    #[arg(long, global = true, env = "AMBOY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON rather than tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a queue over REST, with a worker pool running its jobs.
    Serve(serve::ServeArgs),
    /// Count, list, complete and re-enqueue jobs.
    #[command(subcommand)]
    Management(ManagementCommand),
    /// Watch and abort the jobs running in the service's pool (or its group's pools).
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Put jobs, read them, wait for them.
    #[command(subcommand)]
    Job(JobCommand),
}

/// A status filter argument.
#[derive(Debug, Args)]
struct FilterArg {
    /// pending, in-progress, stale, completed, retrying, stale-retrying, expired, set-aside or
    /// all.
    #[arg(long, default_value = "in-progress", value_parser = parse_filter)]
    filter: StatusFilter,
}

fn parse_filter(name: &str) -> Result<StatusFilter, String> {
    name.parse::<StatusFilter>()
        .map_err(|error| error.to_string())
}

#[derive(Debug, Subcommand)]
enum ManagementCommand {
    /// How many jobs of each type pass the filter.
    Status(FilterArg),
    /// The IDs of the jobs of a type passing the filter.
    Jobs {
        /// The job type.
        #[arg(long = "type")]
        job_type: String,
        #[command(flatten)]
        filter: FilterArg,
    },
    /// Complete one job.
    CompleteJob {
        /// The job's ID.
        #[arg(long, alias = "name")]
        id: String,
    },
    /// Complete every unfinished job passing the filter.
    CompleteJobs(FilterArg),
    /// Complete every unfinished job of a type passing the filter.
    CompleteJobsByType {
        /// The job type.
        #[arg(long = "type")]
        job_type: String,
        #[command(flatten)]
        filter: FilterArg,
    },
    /// Complete every unfinished job passing the filter whose ID matches a pattern.
    CompleteJobsByPattern {
        /// A regular expression matched against job IDs.
        #[arg(long, alias = "job-pattern")]
        pattern: String,
        #[command(flatten)]
        filter: FilterArg,
    },
    /// List jobs, a page at a time.
    List {
        /// A status filter.
        #[arg(long, default_value = "all", value_parser = parse_filter)]
        filter: StatusFilter,
        /// Only jobs of this type.
        #[arg(long = "type")]
        job_type: Option<String>,
        /// Only jobs of this group.
        #[arg(long)]
        group: Option<String>,
        /// Jobs per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this job (the `next` a page printed: group/id/attempt).
        #[arg(long)]
        after: Option<String>,
    },
    /// Every attempt of a job.
    Show {
        /// The job's ID.
        id: String,
    },
    /// Enqueue a failed or expired job again.
    Requeue {
        /// The job's ID.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// The jobs running.
    List(GroupFlag),
    /// Whether jobs are running.
    Check {
        /// A job's ID (repeat for several).
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        group: GroupFlag,
    },
    /// Abort running jobs; exits 1 if any could not be aborted.
    Abort {
        /// A job's ID (repeat for several).
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        group: GroupFlag,
    },
    /// Abort every running job.
    AbortAll(GroupFlag),
}

/// Which pools a pool command looks at.
#[derive(Debug, Args)]
struct GroupFlag {
    /// The pools of the service's queue group rather than its pool.
    #[arg(long)]
    group: bool,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Put a job: `amboy job put shell -- echo hi`, `amboy job put <type> --fields '{…}'`, or
    /// `amboy job put --interchange job.json` (`-` reads standard input).
    Put {
        /// The job type (`shell` takes its command after `--`).
        job_type: Option<String>,
        /// The job's ID (default: a fresh one).
        #[arg(long)]
        id: Option<String>,
        /// The job type's version.
        #[arg(long, default_value_t = 0)]
        version: i32,
        /// The job's own fields, as a JSON object.
        #[arg(long)]
        fields: Option<String>,
        /// A whole job in its interchange form, from a file or `-`.
        #[arg(long, conflicts_with_all = ["job_type", "fields"])]
        interchange: Option<PathBuf>,
        /// The shell job's program and arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// A job's interchange form.
    Get {
        /// The job's ID.
        id: String,
    },
    /// Where a job stands.
    Status {
        /// The job's ID.
        id: String,
    },
    /// Wait until a job finished.
    Wait {
        /// The job's ID.
        id: String,
        /// How long to wait: 30s, 500ms, 5m.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_like(text).ok_or_else(|| format!("'{text}' is not a duration such as 30s or 5m"))
}

/// A duration: a number and a unit (ms, s, m, h), or seconds.
fn humantime_like(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// A failure: what to say and how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            code: if error.is_job_not_found() { 3 } else { 1 },
            message: error.to_string(),
        }
    }
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Runs the command line of this process; returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("amboy: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("amboy: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Runs a parsed command line; returns its exit code.
async fn run(cli: Cli) -> Result<u8, Failure> {
    let out = Output::new(cli.json);
    if let Command::Serve(args) = cli.command {
        return serve::serve(args, cli.token).await;
    }
    let mut connection =
        Connection::new(&cli.service).map_err(|error| Failure::new(2, error.to_string()))?;
    if let Some(token) = &cli.token {
        connection = connection.with_token(token);
    }
    match cli.command {
        Command::Serve(_) => unreachable!("served above"),
        Command::Management(command) => management(command, connection, &out).await,
        Command::Pool(command) => pool(command, connection, &out).await,
        Command::Job(command) => job(command, connection, &out).await,
    }
}

async fn management(
    command: ManagementCommand,
    connection: Connection,
    out: &Output,
) -> Result<u8, Failure> {
    let manager = ManagementClient::new(connection);
    match command {
        ManagementCommand::Status(FilterArg { filter }) => {
            let counts = manager.job_status(filter).await?;
            out.print(&counts, || {
                Table::new(["Job Type", "Count", "Group"]).rows(
                    counts
                        .iter()
                        .map(|c| vec![c.job_type.clone(), c.count.to_string(), c.group.clone()]),
                )
            });
        }
        ManagementCommand::Jobs { job_type, filter } => {
            let ids = manager.job_ids_by_state(&job_type, filter.filter).await?;
            out.print(&ids, || {
                Table::new(["Job Type", "Group", "ID"]).rows(
                    ids.iter()
                        .map(|id| vec![job_type.clone(), id.group.clone(), id.id.clone()]),
                )
            });
        }
        ManagementCommand::CompleteJob { id } => {
            manager.complete_job(&id).await?;
            out.message(
                serde_json::json!({ "completed": 1, "id": id }),
                &format!("completed job '{id}'"),
            );
        }
        ManagementCommand::CompleteJobs(FilterArg { filter }) => {
            let count = manager.complete_jobs(filter).await?;
            completed(out, count, &format!("{filter} job(s)"));
        }
        ManagementCommand::CompleteJobsByType { job_type, filter } => {
            let count = manager
                .complete_jobs_by_type(filter.filter, &job_type)
                .await?;
            completed(
                out,
                count,
                &format!("{} job(s) of type '{job_type}'", filter.filter),
            );
        }
        ManagementCommand::CompleteJobsByPattern { pattern, filter } => {
            let count = manager
                .complete_jobs_by_pattern(filter.filter, &pattern)
                .await?;
            completed(
                out,
                count,
                &format!("{} job(s) matching '{pattern}'", filter.filter),
            );
        }
        ManagementCommand::List {
            filter,
            job_type,
            group,
            limit,
            after,
        } => {
            let mut query = JobQuery::new(filter).limit(limit);
            query.job_type = job_type;
            query.group = group;
            if let Some(after) = after {
                query.after = Some(parse_cursor(&after)?);
            }
            let page = manager.list_jobs(&query).await?;
            out.print(&page, || {
                let mut table = Table::new(["Group", "ID", "Attempt", "Type", "State", "Errors"])
                    .rows(page.jobs.iter().map(|job| {
                        vec![
                            job.group.clone(),
                            job.info.id.clone(),
                            job.info.retry.current_attempt.to_string(),
                            job.info.job_type.name.to_string(),
                            state_of(&job.info).to_owned(),
                            job.info.status.errors.join("; "),
                        ]
                    }));
                if let Some(next) = &page.next {
                    table = table.footer(format!(
                        "more: --after '{}/{}/{}'",
                        next.group, next.id, next.attempt
                    ));
                }
                table
            });
        }
        ManagementCommand::Show { id } => {
            let detail = manager.job(&id).await?;
            out.print(&detail, || attempts_table(&detail.attempts));
        }
        ManagementCommand::Requeue { id } => {
            let info = manager.requeue_job(&id).await?;
            out.print(&info, || attempts_table(std::slice::from_ref(&info)));
        }
    }
    Ok(0)
}

fn completed(out: &Output, count: u64, what: &str) {
    out.message(
        serde_json::json!({ "completed": count }),
        &format!("completed {count} {what}"),
    );
}

/// `group/id/attempt`, as `list` prints it.
fn parse_cursor(text: &str) -> Result<JobCursor, Failure> {
    let bad = || Failure::new(2, format!("--after '{text}' is not group/id/attempt"));
    let (rest, attempt) = text.rsplit_once('/').ok_or_else(bad)?;
    let (group, id) = rest.split_once('/').ok_or_else(bad)?;
    Ok(JobCursor {
        group: group.to_owned(),
        id: id.to_owned(),
        attempt: attempt.parse().map_err(|_| bad())?,
    })
}

fn attempts_table(attempts: &[JobInfo]) -> Table {
    Table::new(["ID", "Attempt", "Type", "State", "Errors"]).rows(attempts.iter().map(|info| {
        vec![
            info.id.clone(),
            info.retry.current_attempt.to_string(),
            info.job_type.name.to_string(),
            state_of(info).to_owned(),
            info.status.errors.join("; "),
        ]
    }))
}

async fn pool(command: PoolCommand, connection: Connection, out: &Output) -> Result<u8, Failure> {
    enum Pools {
        One(PoolClient),
        Group(GroupPoolClient),
    }
    let pools = |group: &GroupFlag| {
        if group.group {
            Pools::Group(GroupPoolClient::new(connection.clone()))
        } else {
            Pools::One(PoolClient::new(connection.clone()))
        }
    };
    match command {
        PoolCommand::List(group) => {
            let running: Vec<(String, String)> = match pools(&group) {
                Pools::One(client) => client
                    .running_jobs()
                    .await?
                    .into_iter()
                    .map(|id| (id, String::new()))
                    .collect(),
                Pools::Group(client) => client
                    .running_jobs()
                    .await?
                    .into_iter()
                    .map(|job| (job.id, job.group.unwrap_or_default()))
                    .collect(),
            };
            let json: Vec<serde_json::Value> = running
                .iter()
                .map(|(id, group)| serde_json::json!({ "id": id, "group": group }))
                .collect();
            out.print(&json, || {
                Table::new(["Job ID", "Group"]).rows(
                    running
                        .iter()
                        .map(|(id, group)| vec![id.clone(), group.clone()]),
                )
            });
        }
        PoolCommand::Check { ids, group } => {
            let pools = pools(&group);
            let mut rows = Vec::new();
            for id in &ids {
                let running = match &pools {
                    Pools::One(client) => client.is_running(id).await?,
                    Pools::Group(client) => client.is_running(id).await?,
                };
                rows.push((id.clone(), running));
            }
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(id, running)| serde_json::json!({ "id": id, "running": running }))
                .collect();
            out.print(&json, || {
                Table::new(["Job ID", "Is Running"]).rows(
                    rows.iter()
                        .map(|(id, running)| vec![id.clone(), running.to_string()]),
                )
            });
        }
        PoolCommand::Abort { ids, group } => {
            let pools = pools(&group);
            let mut rows = Vec::new();
            for id in &ids {
                let aborted = match &pools {
                    Pools::One(client) => client.abort_job(id).await,
                    Pools::Group(client) => client.abort_job(id).await,
                };
                rows.push((id.clone(), aborted.err().map(|error| error.to_string())));
            }
            let failed = rows.iter().any(|(_, error)| error.is_some());
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(id, error)| {
                    serde_json::json!({ "id": id, "aborted": error.is_none(), "error": error })
                })
                .collect();
            out.print(&json, || {
                Table::new(["Job ID", "Aborted", "Error"]).rows(rows.iter().map(|(id, error)| {
                    vec![
                        id.clone(),
                        error.is_none().to_string(),
                        error.clone().unwrap_or_default(),
                    ]
                }))
            });
            return Ok(if failed { 1 } else { 0 });
        }
        PoolCommand::AbortAll(group) => {
            match pools(&group) {
                Pools::One(client) => client.abort_all().await?,
                Pools::Group(client) => client.abort_all().await?,
            }
            out.message(
                serde_json::json!({ "aborted": "all" }),
                "aborted every running job",
            );
        }
    }
    Ok(0)
}

async fn job(command: JobCommand, connection: Connection, out: &Output) -> Result<u8, Failure> {
    let client = QueueClient::new(connection);
    match command {
        JobCommand::Put {
            job_type,
            id,
            version,
            fields,
            interchange,
            command,
        } => {
            let envelope = envelope_to_put(job_type, id, version, fields, interchange, command)?;
            let created = client.submit_interchange(&envelope).await?;
            out.message(serde_json::json!({ "id": created.id }), &created.id);
        }
        JobCommand::Get { id } => {
            let envelope = client.fetch_job(&id).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&envelope).expect("an envelope encodes")
            );
        }
        JobCommand::Status { id } => {
            let status = client.job_status(&id).await?;
            out.print(&status, || {
                attempts_table(std::slice::from_ref(&status.job))
            });
        }
        JobCommand::Wait { id, timeout } => {
            let progress = out.progress(&format!("waiting for job '{id}'"));
            let waited = client.wait_job(&id, timeout).await;
            if let Some(progress) = progress {
                progress.finish_and_clear();
            }
            let Some(status) = waited? else {
                return Err(Failure::new(
                    4,
                    format!("job '{id}' did not finish within {timeout:?}"),
                ));
            };
            out.print(&status, || {
                attempts_table(std::slice::from_ref(&status.job))
            });
            if !status.job.status.errors.is_empty() || status.job.status.expired {
                return Ok(5);
            }
        }
    }
    Ok(0)
}

/// The interchange form of the job `amboy job put` was given.
fn envelope_to_put(
    job_type: Option<String>,
    id: Option<String>,
    version: i32,
    fields: Option<String>,
    interchange: Option<PathBuf>,
    command: Vec<String>,
) -> Result<JobInterchange, Failure> {
    if let Some(path) = interchange {
        let mut text = String::new();
        let read = if path.as_os_str() == "-" {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        } else {
            std::fs::read_to_string(&path).map(|read| text = read)
        };
        read.map_err(|error| Failure::new(2, format!("cannot read {}: {error}", path.display())))?;
        return JobInterchange::from_json(&text)
            .map_err(|error| Failure::new(2, error.to_string()));
    }
    let Some(job_type) = job_type else {
        return Err(Failure::new(2, "name a job type (or give --interchange)"));
    };
    if job_type == "shell" && fields.is_none() {
        let mut job = ShellJob::from_command_line(&command)
            .map_err(|error| Failure::new(2, format!("{error}: give the command after `--`")))?;
        if let Some(id) = id {
            job = job.with_id(id);
        }
        return JobInterchange::from_job(&job).map_err(|error| Failure::new(1, error.to_string()));
    }
    if !command.is_empty() {
        return Err(Failure::new(
            2,
            format!("only the shell job takes a command after `--`, not '{job_type}'"),
        ));
    }
    let fields: serde_json::Value = match fields {
        Some(text) => serde_json::from_str(&text)
            .map_err(|error| Failure::new(2, format!("--fields is not JSON: {error}")))?,
        None => serde_json::json!({}),
    };
    if !fields.is_object() {
        return Err(Failure::new(2, "--fields must be a JSON object"));
    }
    let name = id.unwrap_or_else(|| amboy_core::Base::new().id().to_owned());
    let document =
        serde_json::json!({ "name": name, "type": job_type, "version": version, "job": fields });
    JobInterchange::from_json(&document.to_string())
        .map_err(|error| Failure::new(2, error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cursors_parse() {
        assert_eq!(humantime_like("30s"), Some(Duration::from_secs(30)));
        assert_eq!(humantime_like("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(humantime_like("2m"), Some(Duration::from_secs(120)));
        assert_eq!(humantime_like("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(humantime_like("soon"), None);
        let cursor = parse_cursor("g/job/2").expect("a cursor");
        assert_eq!(
            (cursor.group.as_str(), cursor.id.as_str(), cursor.attempt),
            ("g", "job", 2)
        );
        assert_eq!(
            parse_cursor("/id-with/slash/0").expect("empty group").id,
            "id-with/slash"
        );
        assert!(parse_cursor("nothing").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
