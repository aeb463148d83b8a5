//! [`GroupJob`]: several jobs run as one (amboy's `job.Group`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use amboy_core::dependency::{Manager, State};
use amboy_core::{Base, Job, JobContext, JobError, JobRef, RunOutcome, execute, max_time_deadline};
use amboy_registry::JobInterchange;
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::task::JoinSet;

use crate::JobsError;

/// Several jobs run as one (amboy's `Group`, registered as `group`, version 1).
///
/// The group holds its members in their envelopes ([`JobInterchange`], keyed by job ID), so a
/// group is stored like any job and its members may be of any registered type. Its run:
///
/// * if the group has completed already, records that as its error and runs nothing;
/// * decodes each member (its type must be registered in this program: a member that does not
///   decode is recorded as an error and the others run);
/// * skips members whose dependency is `Passed`, and runs the others, `Blocked` and
///   `Unresolved` ones included (with a warning), as amboy does;
/// * runs the members concurrently, each as [`run_job`](amboy_core::run_job) would (start and
///   end times, completed at the end), bounded by the member's own `max_time` and stopped when
///   the group's run stops;
/// * records each failed member's error on the group as `<member id>: <error>`, as the member
///   finishes, and refreshes the stored envelope of each member that ran without error. A
///   member that failed keeps its envelope from before the run (amboy's continue-on-error
///   semantics), so the group can always be stored and decoded again.
///
/// Member failures are the group's errors, recorded on its status as they happen (one per
/// failed member); `run` itself returns `Ok` once every member ran, and an error only when the
/// group could not run at all (it had completed already).
///
/// A group's dependency must be `always`, as in amboy: the members' own dependencies decide what
/// runs. [`set_dependency`](Job::set_dependency) ignores any other manager, with a warning.
///
/// # Stored form
///
/// The job's fields are `jobs` (member ID → envelope, in JSON) and `metadata` (the [`Base`],
/// nested under amboy's key).
///
/// ```
/// use amboy_core::{Job, run_job};
/// use amboy_jobs::{GroupJob, ShellJob};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut group = GroupJob::new("build");
/// group.add(&ShellJob::new("true", [] as [&str; 0]).with_id("ok")).unwrap();
/// group.add(&ShellJob::new("false", [] as [&str; 0]).with_id("fails")).unwrap();
/// assert!(group.add(&ShellJob::new("true", [] as [&str; 0]).with_id("ok")).is_err());
///
/// run_job(&group).await.unwrap_err();
/// assert_eq!(group.status().errors, ["fails: shell job 'fails': 'false' failed: exit status 1"]);
/// assert!(group.job("ok").unwrap().status.completed);
/// assert!(!group.job("fails").unwrap().status.completed);
/// # }
/// ```
#[derive(Debug)]
pub struct GroupJob {
    base: Base,
    jobs: Mutex<BTreeMap<String, JobInterchange>>,
}

impl GroupJob {
    /// An empty group with this ID.
    pub fn new(id: impl AsRef<str>) -> Self {
        GroupJob {
            base: Base::with_id(id),
            jobs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `job` to the group, in its envelope as it is now. A job whose ID the group holds
    /// already, or that cannot be encoded, is an error.
    pub fn add(&mut self, job: &dyn Job) -> Result<(), JobsError> {
        let jobs = self.jobs.get_mut();
        if jobs.contains_key(job.id()) {
            return Err(JobsError::DuplicateJob {
                group: self.base.id().to_owned(),
                id: job.id().to_owned(),
            });
        }
        let interchange = JobInterchange::from_job(job).map_err(|reason| JobsError::Encode {
            group: self.base.id().to_owned(),
            id: job.id().to_owned(),
            reason: Box::new(reason),
        })?;
        jobs.insert(job.id().to_owned(), interchange);
        Ok(())
    }

    /// Allowed to run for at most `max_time`, members included.
    pub fn with_max_time(self, max_time: Duration) -> Self {
        self.base.metadata().time_info.max_time = max_time;
        self
    }

    /// The members' envelopes, by ID: as added, or as last refreshed by a run.
    pub fn jobs(&self) -> BTreeMap<String, JobInterchange> {
        self.jobs.lock().clone()
    }

    /// The envelope of the member `id`, if the group holds it.
    pub fn job(&self, id: &str) -> Option<JobInterchange> {
        self.jobs.lock().get(id).cloned()
    }

    /// How many members the group holds.
    pub fn len(&self) -> usize {
        self.jobs.lock().len()
    }

    /// Whether the group holds no member.
    pub fn is_empty(&self) -> bool {
        self.jobs.lock().is_empty()
    }

    /// Stores what a member's run left: its error on the group, or its refreshed envelope.
    fn finish_member(&self, member: &dyn Job) {
        let member_id = member.id();
        if let Some(error) = member.error() {
            self.base.add_error(format_args!("{member_id}: {error}"));
            return;
        }
        match JobInterchange::from_job(member) {
            Ok(interchange) => {
                self.jobs.lock().insert(member_id.to_owned(), interchange);
            }
            Err(error) => self.base.add_error(format_args!("{member_id}: {error}")),
        }
    }
}

impl Clone for GroupJob {
    /// A copy with the same ID, metadata and members (see [`Base`]'s `clone`).
    fn clone(&self) -> Self {
        GroupJob {
            base: self.base.clone(),
            jobs: Mutex::new(self.jobs.lock().clone()),
        }
    }
}

#[typetag::serde(name = "group")]
#[async_trait]
impl Job for GroupJob {
    fn base(&self) -> &Base {
        &self.base
    }

    fn version(&self) -> i32 {
        1
    }

    /// Runs the members; see [`GroupJob`].
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let group_id = self.base.id();
        if self.base.status().completed {
            return Err(JobError::new(format!(
                "group job '{group_id}' has completed already: its members do not run again"
            )));
        }
        let members: Vec<(String, JobInterchange)> = self
            .jobs
            .lock()
            .iter()
            .map(|(id, interchange)| (id.clone(), interchange.clone()))
            .collect();
        let mut running = JoinSet::new();
        let mut member_of_task = HashMap::new();
        let mut not_started = 0;
        for (member_id, interchange) in members {
            if ctx.is_cancelled() {
                not_started += 1;
                continue;
            }
            let member = match interchange.resolve() {
                Ok(member) => member,
                Err(error) => {
                    self.base.add_error(format_args!("{member_id}: {error}"));
                    continue;
                }
            };
            let task = running.spawn(run_member(member, ctx.clone()));
            member_of_task.insert(task.id(), member_id);
        }
        while let Some(joined) = running.join_next_with_id().await {
            match joined {
                Ok((_, Some(member))) => self.finish_member(&*member),
                // Skipped: its dependency passed.
                Ok((_, None)) => {}
                Err(error) => {
                    let member_id = member_of_task
                        .get(&error.id())
                        .map_or("<unknown>", String::as_str);
                    self.base.add_error(format_args!(
                        "{member_id}: the member's task failed: {error}"
                    ));
                }
            }
        }
        if not_started > 0 {
            self.base.add_error(format_args!(
                "group job '{group_id}' stopped before starting {not_started} member(s): {}",
                if ctx.token().is_cancelled() {
                    "context canceled"
                } else {
                    "context deadline exceeded"
                }
            ));
        }
        Ok(())
    }

    /// Sets the group's dependency, if it is `always`; any other manager is ignored with a
    /// warning (amboy's rule: the members' own dependencies decide what runs).
    fn set_dependency(&self, dependency: Arc<dyn Manager>) {
        let manager_type = dependency.manager_type();
        if manager_type.name == "always" {
            self.base.set_dependency(dependency);
        } else {
            tracing::warn!(
                job_id = self.base.id(),
                dependency = %manager_type,
                "a group job's dependency must be 'always'; ignoring the new one"
            );
        }
    }
}

/// Runs one member in the group's context, as [`run_job`](amboy_core::run_job) runs a job:
/// `None` if its dependency passed and it did not run.
async fn run_member(member: JobRef, group: JobContext) -> Option<JobRef> {
    let dependency = member.dependency();
    let state = if dependency.does_blocking_io() {
        tokio::task::spawn_blocking(move || dependency.state())
            .await
            .unwrap_or(State::Unresolved)
    } else {
        dependency.state()
    };
    match state {
        State::Passed => return None,
        State::Ready => {}
        State::Blocked | State::Unresolved => tracing::warn!(
            job_id = member.id(),
            state = %state,
            "running a group's member whose dependency is not ready"
        ),
    }
    let max_time = {
        let mut meta = member.base().metadata();
        meta.time_info.start = Some(amboy_core::clock::now());
        meta.status.in_progress = true;
        meta.time_info.max_time
    };
    let ctx = JobContext::with_token(group.token().child_token())
        .with_deadline(group.deadline())
        .with_deadline(max_time_deadline(max_time));
    let outcome = execute(&*member, &ctx).await;
    if outcome == RunOutcome::TimedOut {
        // Work the member started elsewhere stops too.
        ctx.token().cancel();
    }
    {
        let mut meta = member.base().metadata();
        meta.time_info.end = Some(amboy_core::clock::now());
        meta.status.in_progress = false;
        meta.status.completed = true;
    }
    Some(member)
}

/// Refers to this module's code, registration included; see
/// [`register_builtin_jobs`](crate::register_builtin_jobs).
#[inline(never)]
pub(crate) fn link() {
    std::hint::black_box(<GroupJob as Job>::version as fn(&GroupJob) -> i32);
}

/// The stored form, written.
#[derive(Serialize)]
struct GroupJobRef<'a> {
    jobs: &'a BTreeMap<String, JobInterchange>,
    metadata: &'a Base,
}

/// The stored form, read; amboy writes `null` for a group without members.
#[derive(Deserialize)]
struct GroupJobOwned {
    #[serde(default)]
    jobs: Option<BTreeMap<String, JobInterchange>>,
    metadata: Base,
}

impl Serialize for GroupJob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        GroupJobRef {
            jobs: &self.jobs.lock(),
            metadata: &self.base,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for GroupJob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = GroupJobOwned::deserialize(deserializer)?;
        Ok(GroupJob {
            base: owned.metadata,
            jobs: Mutex::new(owned.jobs.unwrap_or_default()),
        })
    }
}
