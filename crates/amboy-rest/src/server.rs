//! [`RestService`]: the axum service.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{AbortableRunner, JobInfo, Queue, QueueGroup, wait_job_interval};
use amboy_management::{JobCursor, JobQuery, Manager, StatusFilter};
use amboy_registry::{JobInterchange, registered_job_types};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::openapi;
use crate::wire::{
    CompletedResponse, CreateResponse, JobStatusResponse, RunningJob, StatusResponse,
};

/// How often a wait looks at the queue (amboy's `WaitInterval`); a wait for every job looks
/// less often as it goes on, up to [`MAX_WAIT_PAUSE`].
const WAIT_INTERVAL: Duration = Duration::from_millis(100);
/// The longest pause of a wait for every job.
const MAX_WAIT_PAUSE: Duration = Duration::from_secs(1);
/// A wait's timeout when the request names none (amboy's).
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(3600);

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The REST service: amboy's queue service, management service, abortable pool service and
/// group pool service in one axum [`Router`], each part served when it is given.
///
/// | part | given with | routes |
/// |---|---|---|
/// | queue | [`queue`](Self::queue) | `GET /v1/status`, `GET /v1/status/wait`, `POST /v1/job/create`, `GET /v1/job/{id}`, `GET /v1/job/status/{id}`, `GET /v1/job/wait/{id}` |
/// | management | [`manager`](Self::manager) | under `/v1/management`: `GET /status/{filter}`, `GET /id/status/{filter}/type/{type}`, `POST /jobs/mark_complete/id/{id}`, `POST /jobs/mark_complete/status/{filter}` (and `/type/{type}`, `/pattern/{pattern}`), `GET /jobs`, `GET /job/{id}`, `POST /jobs/requeue/id/{id}` |
/// | abortable pool | [`pool`](Self::pool) | under `/v1/pool`: `GET /jobs/list`, `DELETE /jobs/abort`, `GET /job/{id}`, `DELETE /job/{id}` |
/// | queue group | [`group`](Self::group) | under `/v1/group`: the pool routes, over the group's queues this process holds |
///
/// `GET /v1/openapi.json` describes them all. Every failure answers with an
/// [`ErrorBody`](crate::ErrorBody) (`{"code", "message"}`) and the status its code gives; a
/// refused request changes nothing. With a [`token`](Self::token), every route needs
/// `Authorization: Bearer <token>` (compared in constant time) and answers 401 without it.
/// Bodies over the [limit](Self::body_limit) (1 MiB by default) answer 413. Each request is
/// traced (`tower_http`'s trace layer, at debug level).
#[derive(Clone)]
pub struct RestService {
    state: AppState,
    body_limit: usize,
}

#[derive(Clone, Default)]
struct AppState {
    #[cfg(feature = "prometheus")]
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    queue: Option<Arc<dyn Queue>>,
    manager: Option<Arc<dyn Manager>>,
    pool: Option<Arc<dyn AbortableRunner>>,
    group: Option<Arc<dyn QueueGroup>>,
    token: Option<Arc<[u8]>>,
    /// Cancelled when [`RestService::serve`] is told to stop: waits under way answer at once.
    stopping: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for RestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestService")
            .field(
                "queue",
                &self.state.queue.as_ref().map(|queue| queue.id().to_owned()),
            )
            .field("manager", &self.state.manager)
            .field("pool", &self.state.pool.is_some())
            .field("group", &self.state.group.is_some())
            .field("token", &self.state.token.is_some())
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl Default for RestService {
    fn default() -> Self {
        Self::new()
    }
}

impl RestService {
    /// The default body limit, 1 MiB.
    pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

    /// A service serving nothing yet.
    pub fn new() -> Self {
        RestService {
            state: AppState::default(),
            body_limit: Self::DEFAULT_BODY_LIMIT,
        }
    }

    /// Serves `queue`: creating, fetching and waiting for its jobs.
    pub fn queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.state.queue = Some(queue);
        self
    }

    /// Serves `manager` under `/v1/management`.
    pub fn manager(mut self, manager: Arc<dyn Manager>) -> Self {
        self.state.manager = Some(manager);
        self
    }

    /// Serves `pool`'s running jobs under `/v1/pool`.
    pub fn pool(mut self, pool: Arc<dyn AbortableRunner>) -> Self {
        self.state.pool = Some(pool);
        self
    }

    /// Serves the running jobs of `group`'s queues (whose runners must be abortable pools)
    /// under `/v1/group`.
    pub fn group(mut self, group: Arc<dyn QueueGroup>) -> Self {
        self.state.group = Some(group);
        self
    }

    /// Serves `GET /metrics` for Prometheus: what `handle`'s recorder recorded (the job
    /// metrics of `amboy_core::metrics`, and any of the application's own), with the gauge
    /// `amboy_queue_jobs{queue, state}` of the served queue's stats, read at each scrape.
    /// [`install_prometheus`](crate::install_prometheus) makes the handle.
    #[cfg(feature = "prometheus")]
    pub fn metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.state.metrics = Some(handle);
        self
    }

    /// Requires `Authorization: Bearer <token>` on every route.
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        self.state.token = Some(Arc::from(token.as_ref().as_bytes()));
        self
    }

    /// Refuses bodies over `bytes` with 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The service as a router, to serve or to nest in an application's own.
    pub fn router(self) -> Router {
        let state = self.state;
        let mut v1 = Router::new().route("/openapi.json", get(openapi_document));
        if state.queue.is_some() {
            v1 = v1
                .route("/status", get(status))
                .route("/status/wait", get(wait_all))
                .route("/job/create", post(create_job))
                .route("/job/{id}", get(fetch_job))
                .route("/job/status/{id}", get(job_status))
                .route("/job/wait/{id}", get(wait_job));
        }
        if state.manager.is_some() {
            let management = Router::new()
                .route("/status/{filter}", get(management_status))
                .route("/id/status/{filter}/type/{job_type}", get(management_ids))
                .route("/jobs/mark_complete/id/{id}", post(complete_job))
                .route("/jobs/mark_complete/status/{filter}", post(complete_jobs))
                .route(
                    "/jobs/mark_complete/status/{filter}/type/{job_type}",
                    post(complete_jobs_by_type),
                )
                .route(
                    "/jobs/mark_complete/status/{filter}/pattern/{pattern}",
                    post(complete_jobs_by_pattern),
                )
                .route("/jobs", get(list_jobs))
                .route("/job/{id}", get(job_detail))
                .route("/jobs/requeue/id/{id}", post(requeue_job));
            v1 = v1.nest("/management", management);
        }
        if state.pool.is_some() {
            let pool = Router::new()
                .route("/jobs/list", get(pool_list))
                .route("/jobs/abort", delete(pool_abort_all))
                .route("/job/{id}", get(pool_check).delete(pool_abort));
            v1 = v1.nest("/pool", pool);
        }
        if state.group.is_some() {
            let group = Router::new()
                .route("/jobs/list", get(group_list))
                .route("/jobs/abort", delete(group_abort_all))
                .route("/job/{id}", get(group_check).delete(group_abort));
            v1 = v1.nest("/group", group);
        }
        let mut router = Router::new();
        #[cfg(feature = "prometheus")]
        if state.metrics.is_some() {
            router = router.route("/metrics", get(prometheus_metrics));
        }
        if state.queue.is_some() {
            // amboy's status at the version's root.
            router = router.route("/v1/", get(status));
        }
        let router = router
            .nest("/v1", v1)
            .fallback(no_route)
            .method_not_allowed_fallback(no_method)
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(tower_http::trace::TraceLayer::new_for_http());
        let router = match &state.token {
            Some(_) => router.layer(middleware::from_fn_with_state(state.clone(), authorize)),
            None => router,
        };
        router.with_state(state)
    }

    /// Serves the service on `listener` until `shutdown` resolves, then stops taking
    /// connections and returns once the requests under way are answered; waits under way
    /// answer at once, 503 `unavailable` (the service is stopping).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stopping = self.state.stopping.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.cancel();
            })
            .await
    }
}

/// Refuses a request without the service's bearer token.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    // The scheme's name is case-insensitive (RFC 9110); the token is not.
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .filter(|value| value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|value| &value[7..]);
    match given {
        Some(given) if bool::from(given.ct_eq(token)) => next.run(request).await,
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this service needs 'Authorization: Bearer <token>' with its token",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {method} {} (GET /v1/openapi.json lists them)",
            uri.path()
        ),
    )
}

async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

/// The Prometheus text of the recorder, with the queue's depth by state.
#[cfg(feature = "prometheus")]
async fn prometheus_metrics(State(state): State<AppState>) -> Result<Response> {
    let handle = state.metrics.as_ref().expect("routed only with a handle");
    if let Some(queue) = &state.queue {
        let stats = queue.stats().await?;
        let label = amboy_core::metrics::queue_label(queue.id()).to_owned();
        for (state, count) in [
            ("pending", stats.pending),
            ("running", stats.running),
            ("completed", stats.completed),
            ("retrying", stats.retrying),
            ("blocked", stats.blocked),
            ("total", stats.total),
        ] {
            metrics::gauge!("amboy_queue_jobs", "queue" => label.clone(), "state" => state)
                .set(count as f64);
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

// -------------------------------------------------------------------------------------------
// Extraction
// -------------------------------------------------------------------------------------------

fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T> {
    path.map(|Path(value)| value)
        .map_err(|rejection| ApiError::invalid(format!("bad path: {}", rejection.body_text())))
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T> {
    query
        .map(|Query(value)| value)
        .map_err(|rejection| ApiError::invalid(format!("bad query: {}", rejection.body_text())))
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "payload_too_large", rejection.body_text())
        } else {
            ApiError::invalid(format!("bad body: {}", rejection.body_text()))
        }
    })
}

fn filter(name: &str) -> Result<StatusFilter> {
    name.parse().map_err(|error: amboy_core::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", error.to_string())
    })
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    timeout: Option<String>,
}

/// A wait's timeout: a duration such as `10s`, `500ms` or `2m` (Go's and humantime's forms),
/// or a number of seconds.
fn wait_timeout(query: &WaitQuery) -> Result<Duration> {
    let Some(text) = query.timeout.as_deref() else {
        return Ok(DEFAULT_WAIT);
    };
    let timeout = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|_| ApiError::invalid("bad timeout"))?
        }
        _ => humantime::parse_duration(text).map_err(|error| {
            ApiError::invalid(format!(
                "timeout '{text}' is not a duration such as 10s, 500ms or 2m: {error}"
            ))
        })?,
    };
    if timeout > MAX_WAIT {
        return Err(ApiError::invalid(format!(
            "timeout '{text}' is over the longest wait, {}",
            humantime::format_duration(MAX_WAIT)
        )));
    }
    Ok(timeout)
}

/// Waits until the queue's stats are complete, looking every 100 ms at first, then less and
/// less often, up to once a second: a queue's stats may be a count of a whole table (on
/// PostgreSQL), and a wait may last an hour.
async fn until_complete(queue: &dyn Queue) -> amboy_core::Result<()> {
    let mut pause = WAIT_INTERVAL;
    while !queue.stats().await?.is_complete() {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_WAIT_PAUSE);
    }
    Ok(())
}

/// `wait`, unless the service is told to stop first: then 503 `unavailable` at once, so that
/// a long wait does not hold a stopping service up.
async fn until_stopping<T>(state: &AppState, wait: impl Future<Output = T>) -> Result<T> {
    tokio::select! {
        biased;
        _ = state.stopping.cancelled() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service is stopping",
        )),
        done = wait => Ok(done),
    }
}

fn timed_out(what: &str, timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "timeout",
        format!("{what} within {}", humantime::format_duration(timeout)),
    )
}

fn queue(state: &AppState) -> &Arc<dyn Queue> {
    state.queue.as_ref().expect("routed only with a queue")
}

fn manager(state: &AppState) -> &Arc<dyn Manager> {
    state.manager.as_ref().expect("routed only with a manager")
}

// -------------------------------------------------------------------------------------------
// The queue
// -------------------------------------------------------------------------------------------

async fn status_of(queue: &dyn Queue) -> Result<StatusResponse> {
    let running = queue.info().started;
    let stats = queue.stats().await?;
    Ok(StatusResponse {
        status: if running { "ok" } else { "degraded" }.to_owned(),
        queue_running: running,
        pending_jobs: stats.pending,
        supported_job_types: registered_job_types()
            .iter()
            .map(|name| (*name).to_owned())
            .collect(),
    })
}

async fn status(State(state): State<AppState>) -> Result<Json<StatusResponse>> {
    Ok(Json(status_of(&**queue(&state)).await?))
}

async fn wait_all(
    State(state): State<AppState>,
    params: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<StatusResponse>> {
    let timeout = wait_timeout(&query(params)?)?;
    let queue = queue(&state);
    let waited = tokio::time::timeout(timeout, until_complete(&**queue));
    match until_stopping(&state, waited).await? {
        Ok(waited) => waited?,
        Err(_) => return Err(timed_out("the queue's jobs did not all finish", timeout)),
    }
    Ok(Json(status_of(&**queue).await?))
}

async fn create_job(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<CreateResponse>> {
    let bytes = body(bytes)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|error| ApiError::invalid(format!("the body is not UTF-8: {error}")))?;
    let envelope = JobInterchange::from_json(text)?;
    let job = envelope.resolve()?;
    let queue = queue(&state);
    let id = job.id().to_owned();
    queue.put(job).await?;
    Ok(Json(CreateResponse { id }))
}

async fn fetch_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobInterchange>> {
    let id = path(id)?;
    let job = queue(&state).get(&id).await?;
    Ok(Json(JobInterchange::from_job(&*job)?))
}

async fn job_status_of(queue: &dyn Queue, id: &str) -> Result<JobStatusResponse> {
    let job = queue.get(id).await?;
    let info = JobInfo::new(&*job);
    Ok(JobStatusResponse {
        id: info.id.clone(),
        completed: (info.status.completed && !info.retry.should_retry()) || info.status.expired,
        job: info,
    })
}

async fn job_status(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobStatusResponse>> {
    let id = path(id)?;
    Ok(Json(job_status_of(&**queue(&state), &id).await?))
}

async fn wait_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<JobStatusResponse>> {
    let id = path(id)?;
    let timeout = wait_timeout(&query(params)?)?;
    let queue = queue(&state);
    // A job that does not exist is a 404 at once, not a wait.
    queue.get(&id).await?;
    let waited = tokio::time::timeout(timeout, wait_job_interval(&**queue, &id, WAIT_INTERVAL));
    match until_stopping(&state, waited).await? {
        Ok(outcome) => {
            outcome?;
        }
        Err(_) => return Err(timed_out(&format!("job '{id}' did not finish"), timeout)),
    }
    Ok(Json(job_status_of(&**queue, &id).await?))
}

// -------------------------------------------------------------------------------------------
// Management
// -------------------------------------------------------------------------------------------

async fn management_status(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<amboy_management::JobTypeCount>>> {
    let filter = filter(&path(name)?)?;
    Ok(Json(manager(&state).job_status(filter).await?))
}

async fn management_ids(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Vec<amboy_management::GroupedId>>> {
    let (name, job_type) = path(params)?;
    let filter = filter(&name)?;
    Ok(Json(
        manager(&state).job_ids_by_state(&job_type, filter).await?,
    ))
}

async fn complete_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CompletedResponse>> {
    let id = path(id)?;
    manager(&state).complete_job(&id).await?;
    Ok(Json(CompletedResponse {
        message: format!("job '{id}' is complete"),
        completed: 1,
    }))
}

async fn complete_jobs(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<CompletedResponse>> {
    let filter = filter(&path(name)?)?;
    let completed = manager(&state).complete_jobs(filter).await?;
    Ok(Json(CompletedResponse {
        message: format!("completed {completed} {filter} job(s)"),
        completed,
    }))
}

async fn complete_jobs_by_type(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CompletedResponse>> {
    let (name, job_type) = path(params)?;
    let filter = filter(&name)?;
    let completed = manager(&state)
        .complete_jobs_by_type(filter, &job_type)
        .await?;
    Ok(Json(CompletedResponse {
        message: format!("completed {completed} {filter} job(s) of type '{job_type}'"),
        completed,
    }))
}

async fn complete_jobs_by_pattern(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CompletedResponse>> {
    let (name, pattern) = path(params)?;
    let filter = filter(&name)?;
    let completed = manager(&state)
        .complete_jobs_by_pattern(filter, &pattern)
        .await?;
    Ok(Json(CompletedResponse {
        message: format!("completed {completed} {filter} job(s) matching '{pattern}'"),
        completed,
    }))
}

/// The query string of `GET /v1/management/jobs`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    filter: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    group: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    after_group: Option<String>,
    after_id: Option<String>,
    after_attempt: Option<u32>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(state): State<AppState>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<amboy_management::JobPage>> {
    let params = query(params)?;
    let mut job_query = JobQuery::new(match &params.filter {
        Some(name) => filter(name)?,
        None => StatusFilter::All,
    });
    job_query.job_type = params.job_type;
    job_query.group = params.group;
    job_query.created_after = params.created_after;
    job_query.created_before = params.created_before;
    if let Some(limit) = params.limit {
        job_query.limit = limit;
    }
    job_query.after = match (params.after_id, params.after_group, params.after_attempt) {
        (Some(id), group, attempt) => Some(JobCursor {
            group: group.unwrap_or_default(),
            id,
            attempt: attempt.unwrap_or_default(),
        }),
        (None, None, None) => None,
        _ => return Err(ApiError::invalid("a cursor needs after_id")),
    };
    Ok(Json(manager(&state).list_jobs(&job_query).await?))
}

async fn job_detail(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<amboy_management::JobDetail>> {
    let id = path(id)?;
    Ok(Json(manager(&state).job(&id).await?))
}

async fn requeue_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobInfo>> {
    let id = path(id)?;
    Ok(Json(manager(&state).requeue_job(&id).await?))
}

// -------------------------------------------------------------------------------------------
// The abortable pool and the group's pools
// -------------------------------------------------------------------------------------------

fn pool(state: &AppState) -> &Arc<dyn AbortableRunner> {
    state.pool.as_ref().expect("routed only with a pool")
}

fn not_running(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_running",
        format!("job '{id}' is not running"),
    )
}

fn running(id: String, group: Option<String>, status: &str) -> RunningJob {
    RunningJob {
        id,
        group,
        status: status.to_owned(),
    }
}

async fn pool_list(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(pool(&state).running_jobs())
}

async fn pool_abort_all(State(state): State<AppState>) -> Result<Json<serde_json::Value>> {
    pool(&state).abort_all().await?;
    Ok(Json(serde_json::json!({})))
}

async fn pool_check(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunningJob>> {
    let id = path(id)?;
    if !pool(&state).is_running(&id) {
        return Err(not_running(&id));
    }
    Ok(Json(running(id, None, "running")))
}

async fn pool_abort(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunningJob>> {
    let id = path(id)?;
    let pool = pool(&state);
    if !pool.is_running(&id) {
        return Err(not_running(&id));
    }
    pool.abort(&id).await.map_err(|error| {
        if error.is_job_not_found() {
            not_running(&id)
        } else {
            ApiError::from(error)
        }
    })?;
    Ok(Json(running(id, None, "aborted")))
}

/// The queues of the group this process holds whose runners are abortable pools, by name:
/// looked at without building, starting or refreshing any (watching changes nothing).
async fn group_pools(state: &AppState) -> Result<Vec<(String, Arc<dyn amboy_core::Runner>)>> {
    let group = state.group.as_ref().expect("routed only with a group");
    Ok(group
        .local_queues()
        .into_iter()
        .filter_map(|(name, queue)| {
            let runner = queue.runner()?;
            runner.as_abortable().is_some().then_some((name, runner))
        })
        .collect())
}

async fn group_list(State(state): State<AppState>) -> Result<Json<Vec<RunningJob>>> {
    let mut jobs = Vec::new();
    for (name, runner) in group_pools(&state).await? {
        let pool = runner.as_abortable().expect("abortable");
        jobs.extend(
            pool.running_jobs()
                .into_iter()
                .map(|id| running(id, Some(name.clone()), "running")),
        );
    }
    Ok(Json(jobs))
}

async fn group_abort_all(State(state): State<AppState>) -> Result<Json<serde_json::Value>> {
    for (_, runner) in group_pools(&state).await? {
        runner
            .as_abortable()
            .expect("abortable")
            .abort_all()
            .await?;
    }
    Ok(Json(serde_json::json!({})))
}

async fn group_check(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunningJob>> {
    let id = path(id)?;
    for (name, runner) in group_pools(&state).await? {
        if runner.as_abortable().expect("abortable").is_running(&id) {
            return Ok(Json(running(id, Some(name), "running")));
        }
    }
    Err(not_running(&id))
}

async fn group_abort(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunningJob>> {
    let id = path(id)?;
    for (name, runner) in group_pools(&state).await? {
        let pool = runner.as_abortable().expect("abortable");
        if pool.is_running(&id) {
            pool.abort(&id).await?;
            return Ok(Json(running(id, Some(name), "aborted")));
        }
    }
    Err(not_running(&id))
}
