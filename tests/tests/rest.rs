//! The REST service and its clients: a real server on `127.0.0.1:0`, driven by the clients and
//! by raw HTTP. The management scenarios run through the service too, with the management
//! client as their manager.

use std::sync::Arc;
use std::time::Duration;

use amboy::local::{
    LimitedSizeQueue, LimitedSizeSerializableQueue, LocalGroupQueueOptions, LocalQueueGroup,
    LocalQueueGroupOptions,
};
use amboy::management::{Manager, QueueManager};
use amboy::postgres::PostgresManager;
use amboy::rest::{
    Connection, ErrorBody, GroupPoolClient, ManagementClient, PoolClient, QueueClient, RestService,
};
use amboy::runner::{AbortablePool, LocalWorkers};
use amboy::{Base, Queue, QueueGroup};
use amboy_tests::cases::IdleRunner;
use amboy_tests::jobs::{Gated, Noop};
use amboy_tests::management::{self as scenarios, MANAGER_LOCK_TIMEOUT, Managed, age_in_place};
use amboy_tests::postgres;
use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(10);

/// A service being served, and how to stop it.
struct Served {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    fn connection(&self) -> Connection {
        Connection::new(&self.url).expect("a URL")
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("once").send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("stops in time")
            .expect("the server task")
            .expect("serve");
    }
}

async fn serve(service: RestService) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(service.serve(listener, async {
        let _ = stopped.await;
    }));
    Served {
        url,
        stop: Some(stop),
        task,
    }
}

/// Raw HTTP: the status and the body.
async fn raw(method: Method, url: &str, body: Option<Vec<u8>>) -> (StatusCode, Vec<u8>) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status();
    (status, response.bytes().await.expect("a body").to_vec())
}

/// The error body of a failed request, which must be one.
fn error_of(status: StatusCode, body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|error| {
        panic!(
            "{status}: not an error body ({error}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

async fn expect_error(
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
    status: StatusCode,
    code: &str,
) -> ErrorBody {
    let (got, bytes) = raw(method.clone(), url, body).await;
    let error = error_of(got, &bytes);
    assert_eq!(
        (got, error.code.as_str()),
        (status, code),
        "{method} {url}: {error:?}"
    );
    error
}

async fn idle_queue(queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    queue
}

// -------------------------------------------------------------------------------------------
// The management scenarios, through the service
// -------------------------------------------------------------------------------------------

/// A queue managed through the service: the scenarios' manager is the management client.
async fn remote(queue: Arc<dyn Queue>, manager: Arc<dyn Manager>, stores_copies: bool) -> Managed {
    let served = serve(RestService::new().queue(queue.clone()).manager(manager)).await;
    let client = ManagementClient::new(served.connection());
    // The server lives as long as the test's runtime.
    std::mem::forget(served.stop);
    Managed {
        manager: Arc::new(client),
        age: age_in_place(queue.clone()),
        queue,
        stores_copies,
    }
}

fn through_rest_serializable() -> BoxFuture<'static, Managed> {
    Box::pin(async {
        let queue = idle_queue(LimitedSizeSerializableQueue::new(64)).await;
        let manager = QueueManager::new(queue.clone()).with_lock_timeout(MANAGER_LOCK_TIMEOUT);
        remote(queue, Arc::new(manager), true).await
    })
}

fn through_rest_limited_size() -> BoxFuture<'static, Managed> {
    Box::pin(async {
        let queue = idle_queue(LimitedSizeQueue::new(64)).await;
        let manager = QueueManager::new(queue.clone()).with_lock_timeout(MANAGER_LOCK_TIMEOUT);
        remote(queue, Arc::new(manager), false).await
    })
}

fn through_rest_postgres() -> BoxFuture<'static, Managed> {
    Box::pin(async {
        let queue = postgres::queue(postgres::options());
        let manager = PostgresManager::for_queue(&queue).with_lock_timeout(MANAGER_LOCK_TIMEOUT);
        let age = scenarios::age_in_postgres(queue.pool().clone(), &queue.options().schema);
        let queue = idle_queue(queue).await;
        let mut managed = remote(queue, Arc::new(manager), true).await;
        managed.age = age;
        managed
    })
}

amboy_tests::management_scenarios! {
    management_limited_size => through_rest_limited_size,
    management_serializable => through_rest_serializable,
    management_postgres => through_rest_postgres,
}

// -------------------------------------------------------------------------------------------
// The queue service
// -------------------------------------------------------------------------------------------

/// A job created through the client runs; its status, interchange and wait answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_by_the_client_runs_and_is_reported() {
    let queue = LimitedSizeQueue::new(64);
    queue.set_runner(LocalWorkers::new(2)).expect("a runner");
    queue.start().await.expect("start");
    let served = serve(RestService::new().queue(queue.clone())).await;
    let client = QueueClient::new(served.connection());
    let status = client.status().await.expect("status");
    assert!(status.queue_running && status.status == "ok", "{status:?}");
    assert!(
        status
            .supported_job_types
            .iter()
            .any(|name| name == "conformance-noop"),
        "{status:?}"
    );
    let id = client
        .submit_job(&*Noop::new("hello"))
        .await
        .expect("submit");
    assert_eq!(id, "hello");
    let done = client
        .wait_job("hello", LIMIT)
        .await
        .expect("wait")
        .expect("finished in time");
    assert!(done.completed && done.job.status.completed, "{done:?}");
    assert!(client.job_complete("hello").await.expect("status"));
    let envelope = client.fetch_job("hello").await.expect("fetch");
    assert_eq!(
        (envelope.name.as_str(), envelope.type_name.as_str()),
        ("hello", "conformance-noop")
    );
    assert!(client.wait_all(LIMIT).await.expect("wait all"));
    assert!(
        queue
            .get("hello")
            .await
            .expect("stored")
            .base()
            .status()
            .completed
    );
    served.stop().await;
    queue.close().await;
}

/// Every failure answers JSON with its status and code, names the problem, and stores
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_answer_json_with_stable_codes_and_store_nothing() {
    let queue = idle_queue(LimitedSizeQueue::new(64)).await;
    let manager: Arc<dyn Manager> = Arc::new(QueueManager::new(queue.clone()));
    let served = serve(
        RestService::new()
            .queue(queue.clone())
            .manager(manager)
            .body_limit(4096),
    )
    .await;
    let url = |path: &str| format!("{}{path}", served.url);
    let client = QueueClient::new(served.connection());
    client
        .submit_job(&*Noop::new("taken"))
        .await
        .expect("submit");
    let total = queue.stats().await.expect("stats").total;

    expect_error(
        Method::GET,
        &url("/v1/nowhere"),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        Method::PUT,
        &url("/v1/status"),
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    expect_error(
        Method::GET,
        &url("/v1/job/missing"),
        None,
        StatusCode::NOT_FOUND,
        "job_not_found",
    )
    .await;
    expect_error(
        Method::GET,
        &url("/v1/job/status/missing"),
        None,
        StatusCode::NOT_FOUND,
        "job_not_found",
    )
    .await;
    expect_error(
        Method::GET,
        &url("/v1/job/wait/missing"),
        None,
        StatusCode::NOT_FOUND,
        "job_not_found",
    )
    .await;
    let create = url("/v1/job/create");
    let malformed = expect_error(
        Method::POST,
        &create,
        Some(br#"{"name": "half"#.to_vec()),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(
        malformed.message.contains("EOF") && malformed.message.contains("column"),
        "{malformed:?}"
    );
    let unknown = expect_error(
        Method::POST,
        &create,
        Some(br#"{"name":"alien","type":"no-such-type","version":0,"job":{}}"#.to_vec()),
        StatusCode::BAD_REQUEST,
        "unknown_job_type",
    )
    .await;
    assert!(
        unknown.message.contains("no-such-type") && unknown.message.contains("alien"),
        "{unknown:?}"
    );
    let version = expect_error(
        Method::POST,
        &create,
        Some({
            let mut envelope =
                amboy::registry::JobInterchange::from_job(&*Noop::new("old")).unwrap();
            envelope.version = 7;
            serde_json::to_vec(&envelope).unwrap()
        }),
        StatusCode::BAD_REQUEST,
        "version_mismatch",
    )
    .await;
    assert!(version.message.contains("old"), "{version:?}");
    let envelope = serde_json::to_vec(
        &amboy::registry::JobInterchange::from_job(&*Noop::new("taken")).unwrap(),
    )
    .unwrap();
    expect_error(
        Method::POST,
        &create,
        Some(envelope),
        StatusCode::CONFLICT,
        "duplicate_job",
    )
    .await;
    let large = format!(
        r#"{{"name":"big","type":"conformance-noop","version":0,"job":{{"pad":"{}"}}}}"#,
        "x".repeat(8192)
    );
    expect_error(
        Method::POST,
        &create,
        Some(large.into_bytes()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    expect_error(
        Method::POST,
        &create,
        Some(vec![0xff, 0xfe, 0x00]),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let filter = expect_error(
        Method::GET,
        &url("/v1/management/status/bogus"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_filter",
    )
    .await;
    assert!(filter.message.contains("'bogus'"), "{filter:?}");
    let timeout = expect_error(
        Method::GET,
        &url("/v1/job/wait/taken?timeout=forever"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(timeout.message.contains("forever"), "{timeout:?}");
    // Nobody runs the queue's jobs: the wait runs out.
    expect_error(
        Method::GET,
        &url("/v1/job/wait/taken?timeout=200ms"),
        None,
        StatusCode::REQUEST_TIMEOUT,
        "timeout",
    )
    .await;
    expect_error(
        Method::GET,
        &url("/v1/status/wait?timeout=0.2"),
        None,
        StatusCode::REQUEST_TIMEOUT,
        "timeout",
    )
    .await;
    assert_eq!(
        client
            .wait_job("taken", Duration::from_millis(100))
            .await
            .expect("a wait"),
        None
    );
    expect_error(
        Method::POST,
        &url("/v1/management/jobs/mark_complete/id/missing"),
        None,
        StatusCode::NOT_FOUND,
        "job_not_found",
    )
    .await;
    expect_error(
        Method::POST,
        &url("/v1/management/jobs/mark_complete/status/all/pattern/%28unclosed"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        Method::GET,
        &url("/v1/management/jobs?limit=0"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        Method::GET,
        &url("/v1/management/jobs?after_attempt=x"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    // The service serves no pool: its routes are not there.
    expect_error(
        Method::GET,
        &url("/v1/pool/jobs/list"),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    assert_eq!(
        queue.stats().await.expect("stats").total,
        total,
        "nothing was stored"
    );
    served.stop().await;
    queue.close().await;
}

/// Odd input of every kind gets a 4xx answer, and the service keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_panics_the_service() {
    let queue = idle_queue(LimitedSizeQueue::new(64)).await;
    let manager: Arc<dyn Manager> = Arc::new(QueueManager::new(queue.clone()));
    let served = serve(RestService::new().queue(queue.clone()).manager(manager)).await;
    let create = format!("{}/v1/job/create", served.url);
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"text\"".to_vec(),
        b"1e999999".to_vec(),
        nested.into_bytes(),
        br#"{"name":"","type":"conformance-noop","version":0,"job":{"base":{}}}"#.to_vec(),
        br#"{"name":"n","type":"conformance-noop","version":0,"job":"not an object"}"#.to_vec(),
        br#"{"name":"n","type":"conformance-noop","version":-1,"job":{}}"#.to_vec(),
        br#"{"name":"n","type":"conformance-noop","version":0,"job":{},"time_info":{"created":"yesterday"}}"#.to_vec(),
        br#"{"name":"n","type":"conformance-noop","version":0,"job":{},"retry_info":{"max_attempts":-5}}"#.to_vec(),
    ];
    for body in bodies {
        let (status, bytes) = raw(Method::POST, &create, Some(body.clone())).await;
        assert!(
            status.is_client_error(),
            "{status} for {}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(80)
                .collect::<String>(),
            String::from_utf8_lossy(&bytes)
        );
        error_of(status, &bytes);
    }
    for path in [
        "/v1/job/%00",
        "/v1/job/%FF%FE",
        "/v1/management/status/%E2%82",
        "/v1/management/job/..%2F..",
        "/v1/job/wait/x?timeout=-1s",
        "/v1/management/jobs?created_after=never",
    ] {
        let (status, bytes) = raw(Method::GET, &format!("{}{path}", served.url), None).await;
        assert!(
            status.is_client_error(),
            "{status} for {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        error_of(status, &bytes);
    }
    let client = QueueClient::new(served.connection());
    assert!(client.status().await.is_ok(), "still answering");
    assert_eq!(
        queue.stats().await.expect("stats").total,
        0,
        "nothing was stored"
    );
    served.stop().await;
    queue.close().await;
}

/// With a token, every route needs it: 401 (with `WWW-Authenticate`) without it or with
/// another; the clients send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_route() {
    let queue = idle_queue(LimitedSizeQueue::new(64)).await;
    let served = serve(RestService::new().queue(queue.clone()).token("s3cret")).await;
    for path in ["/v1/status", "/v1/openapi.json", "/v1/job/x", "/v1/nowhere"] {
        let url = format!("{}{path}", served.url);
        expect_error(
            Method::GET,
            &url,
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth("s3cret-not")
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
    let created = format!("{}/v1/job/create", served.url);
    let envelope = serde_json::to_vec(
        &amboy::registry::JobInterchange::from_job(&*Noop::new("sneaky")).unwrap(),
    )
    .unwrap();
    expect_error(
        Method::POST,
        &created,
        Some(envelope),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(
        queue.get("sneaky").await.is_err(),
        "a refused put stores nothing"
    );

    let anonymous = QueueClient::new(served.connection());
    assert!(anonymous.status().await.is_err());
    let client = QueueClient::new(served.connection().with_token("s3cret"));
    client
        .submit_job(&*Noop::new("allowed"))
        .await
        .expect("with the token");
    assert!(queue.get("allowed").await.is_ok());
    served.stop().await;
    queue.close().await;
}

// -------------------------------------------------------------------------------------------
// Pools and groups
// -------------------------------------------------------------------------------------------

/// Polls until `check` holds, for at most [`LIMIT`].
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    tokio::time::timeout(LIMIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} in time"));
}

/// The pool service lists, checks and aborts running jobs; the client's paths are the
/// service's (amboy's client used paths the service did not have).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_service_lists_checks_and_aborts_running_jobs() {
    let pool = AbortablePool::new(2);
    let queue = LimitedSizeQueue::new(64);
    queue.set_runner(pool.clone()).expect("a runner");
    queue.start().await.expect("start");
    let served = serve(RestService::new().queue(queue.clone()).pool(pool)).await;
    let client = PoolClient::new(served.connection());
    assert!(client.running_jobs().await.expect("list").is_empty());
    queue
        .put(Gated::new(Base::with_id("stuck"), "rest-pool-never"))
        .await
        .expect("put");
    until("the job runs", async || {
        client.is_running("stuck").await.expect("check")
    })
    .await;
    assert_eq!(client.running_jobs().await.expect("list"), ["stuck"]);
    let aborted = client.abort_job("stuck").await.expect("abort");
    assert_eq!(
        (aborted.id.as_str(), aborted.status.as_str()),
        ("stuck", "aborted")
    );
    assert!(!client.is_running("stuck").await.expect("check"));
    let error = client.abort_job("stuck").await.expect_err("not running");
    assert!(error.is_job_not_found(), "{error}");
    let status = queue.get("stuck").await.expect("stored").base().status();
    assert!(status.completed && !status.errors.is_empty(), "{status:?}");
    queue
        .put(Gated::new(Base::with_id("stuck-2"), "rest-pool-never"))
        .await
        .expect("put");
    until("the job runs", async || {
        client.is_running("stuck-2").await.expect("check")
    })
    .await;
    client.abort_all().await.expect("abort all");
    assert!(client.running_jobs().await.expect("list").is_empty());
    served.stop().await;
    queue.close().await;
}

/// A group whose queues are run by abortable pools of one worker.
fn abortable_group() -> Arc<LocalQueueGroup> {
    LocalQueueGroup::new(LocalQueueGroupOptions {
        default_queue: LocalGroupQueueOptions::new(|| {
            let queue = LimitedSizeQueue::new(16);
            queue.set_runner(AbortablePool::new(1)).expect("a runner");
            queue
        }),
        ttl: Duration::ZERO,
    })
    .expect("a group")
}

/// The group service finds running jobs in every queue of the group this process holds,
/// naming their group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_service_covers_every_queue_of_the_group() {
    let group = abortable_group();
    for (name, id) in [("tenant-a", "a-stuck"), ("tenant-b", "b-stuck")] {
        let queue = group.get(name, &[]).await.expect("a queue");
        queue
            .put(Gated::new(Base::with_id(id), "rest-group-never"))
            .await
            .expect("put");
    }
    let served = serve(RestService::new().group(group.clone())).await;
    let client = GroupPoolClient::new(served.connection());
    until("both jobs run", async || {
        client.running_jobs().await.expect("list").len() == 2
    })
    .await;
    let mut running: Vec<(String, String)> = client
        .running_jobs()
        .await
        .expect("list")
        .into_iter()
        .map(|job| (job.group.unwrap_or_default(), job.id))
        .collect();
    running.sort();
    assert_eq!(
        running,
        [
            ("tenant-a".to_owned(), "a-stuck".to_owned()),
            ("tenant-b".to_owned(), "b-stuck".to_owned())
        ]
    );
    let aborted = client.abort_job("b-stuck").await.expect("abort");
    assert_eq!(aborted.group.as_deref(), Some("tenant-b"));
    assert!(!client.is_running("b-stuck").await.expect("check"));
    assert!(client.is_running("a-stuck").await.expect("check"));
    client.abort_all().await.expect("abort all");
    assert!(client.running_jobs().await.expect("list").is_empty());
    served.stop().await;
    group.close().await.expect("close");
}

// -------------------------------------------------------------------------------------------
// The document and shutdown
// -------------------------------------------------------------------------------------------

/// The OpenAPI document lists every route, and each route it lists is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_the_routes_served() {
    let queue = idle_queue(LimitedSizeQueue::new(16)).await;
    let group = abortable_group();
    let served = serve(
        RestService::new()
            .queue(queue.clone())
            .manager(Arc::new(QueueManager::new(queue.clone())))
            .pool(AbortablePool::new(1))
            .group(group.clone()),
    )
    .await;
    let (status, body) = raw(
        Method::GET,
        &format!("{}/v1/openapi.json", served.url),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let document: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(document["openapi"], "3.0.3");
    let paths = document["paths"].as_object().expect("paths");
    let mut routes = 0;
    for (path, methods) in paths {
        for method in methods.as_object().expect("methods").keys() {
            routes += 1;
            let concrete = path
                .replace("{filter}", "pending")
                .replace("{type}", "conformance-noop")
                .replace("{pattern}", "x")
                .replace("{id}", "x");
            let url = format!("{}{concrete}?timeout=1ms", served.url);
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            let (status, bytes) = raw(method.clone(), &url, None).await;
            if !status.is_success() {
                let error = error_of(status, &bytes);
                assert!(
                    !matches!(error.code.as_str(), "not_found" | "method_not_allowed"),
                    "{method} {path} is documented but not served: {error:?}"
                );
            }
        }
    }
    assert_eq!(routes, 25, "every route is documented");
    served.stop().await;
    group.close().await.expect("close");
    queue.close().await;
}

/// A queue that announces each `get`, so that a test knows a request reached the service.
struct Announcing {
    inner: Arc<dyn Queue>,
    got: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Queue for Announcing {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn put(&self, job: amboy::JobRef) -> amboy::Result<()> {
        self.inner.put(job).await
    }
    async fn put_many(&self, jobs: Vec<amboy::JobRef>) -> amboy::Result<()> {
        self.inner.put_many(jobs).await
    }
    async fn get(&self, id: &str) -> amboy::Result<amboy::JobRef> {
        self.got.notify_one();
        self.inner.get(id).await
    }
    async fn next(&self) -> amboy::Result<amboy::JobRef> {
        self.inner.next().await
    }
    fn info(&self) -> amboy::QueueInfo {
        self.inner.info()
    }
    async fn complete(&self, job: &amboy::JobRef) -> amboy::Result<()> {
        self.inner.complete(job).await
    }
    async fn save(&self, job: &amboy::JobRef) -> amboy::Result<()> {
        self.inner.save(job).await
    }
    async fn results(&self) -> amboy::JobStream {
        self.inner.results().await
    }
    async fn job_info(&self) -> amboy::JobInfoStream {
        self.inner.job_info().await
    }
    async fn stats(&self) -> amboy::Result<amboy::QueueStats> {
        self.inner.stats().await
    }
    fn runner(&self) -> Option<Arc<dyn amboy::Runner>> {
        self.inner.runner()
    }
    fn set_runner(&self, runner: Arc<dyn amboy::Runner>) -> amboy::Result<()> {
        self.inner.set_runner(runner)
    }
    async fn start(&self) -> amboy::Result<()> {
        self.inner.start().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// Shutting down stops taking requests and returns once the requests under way are answered;
/// a wait under way answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_under_way() {
    let inner = idle_queue(LimitedSizeQueue::new(16)).await;
    inner.put(Noop::new("never-runs")).await.expect("put");
    let got = Arc::new(tokio::sync::Notify::new());
    let queue = Arc::new(Announcing {
        inner: inner.clone(),
        got: got.clone(),
    });
    let served = serve(RestService::new().queue(queue)).await;
    let url = format!("{}/v1/job/wait/never-runs?timeout=1h", served.url);
    let waiting = tokio::spawn(async move { raw(Method::GET, &url, None).await });
    // The wait looked the job up: the service is serving the request.
    tokio::time::timeout(LIMIT, got.notified())
        .await
        .expect("the wait reached the service");
    served.stop().await;
    let (status, body) = waiting.await.expect("the waiting request");
    // The wait is answered at once, not at its timeout: a stopping service is not held up.
    let error = error_of(status, &body);
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(error.message.contains("stopping"), "{error:?}");
    inner.close().await;
}

/// The built-in shell job is created through the service like any registered job, runs, and
/// its output and exit code come back in its interchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_job_runs_through_the_service() {
    use amboy::jobs::ShellJob;
    amboy::jobs::register_builtin_jobs();
    let queue = LimitedSizeQueue::new(16);
    queue.set_runner(LocalWorkers::new(1)).expect("a runner");
    queue.start().await.expect("start");
    let served = serve(RestService::new().queue(queue.clone())).await;
    let client = QueueClient::new(served.connection());
    let status = client.status().await.expect("status");
    assert!(
        status
            .supported_job_types
            .iter()
            .any(|name| name == "shell"),
        "{status:?}"
    );
    let job = ShellJob::from_command_line(&["echo", "hi"]).expect("a command");
    let id = client.submit_job(&job).await.expect("submit");
    let done = client
        .wait_job(&id, LIMIT)
        .await
        .expect("wait")
        .expect("in time");
    assert!(
        done.completed && done.job.status.errors.is_empty(),
        "{done:?}"
    );
    let envelope = client.fetch_job(&id).await.expect("fetch");
    assert_eq!(envelope.type_name, "shell");
    envelope.resolve().expect("decodes");
    let fields: serde_json::Value = serde_json::from_str(envelope.job.get()).expect("JSON");
    assert_eq!(
        (&fields["output"], &fields["exit_code"]),
        (&"hi".into(), &0.into()),
        "{fields}"
    );
    served.stop().await;
    queue.close().await;
}

/// A group job holding a shell job and a failing one, created through the service: it runs
/// both, records the failure, and its stored members show the one that succeeded completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_job_runs_through_the_service() {
    use amboy::jobs::{GroupJob, ShellJob};
    let queue = LimitedSizeQueue::new(16);
    queue.set_runner(LocalWorkers::new(1)).expect("a runner");
    queue.start().await.expect("start");
    let served = serve(RestService::new().queue(queue.clone())).await;
    let client = QueueClient::new(served.connection());
    let mut group = GroupJob::new("both");
    group
        .add(&ShellJob::new("echo", ["member"]).with_id("works"))
        .expect("a member");
    group
        .add(&ShellJob::new("false", Vec::<String>::new()).with_id("fails"))
        .expect("a member");
    client.submit_job(&group).await.expect("submit");
    let done = client
        .wait_job("both", LIMIT)
        .await
        .expect("wait")
        .expect("in time");
    assert_eq!(done.job.status.errors.len(), 1, "{done:?}");
    assert!(done.job.status.errors[0].starts_with("fails: "), "{done:?}");
    let envelope = client.fetch_job("both").await.expect("fetch");
    assert_eq!(envelope.type_name, "group");
    let fields: serde_json::Value = serde_json::from_str(envelope.job.get()).expect("JSON");
    assert_eq!(
        fields["jobs"]["works"]["job"]["output"], "member",
        "{fields}"
    );
    served.stop().await;
    queue.close().await;
}

/// A queue that is closed answers 503 `unavailable`, and the job is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_queue_answers_unavailable() {
    let queue = idle_queue(LimitedSizeQueue::new(16)).await;
    let served = serve(RestService::new().queue(queue.clone())).await;
    queue.close().await;
    let envelope = serde_json::to_vec(
        &amboy::registry::JobInterchange::from_job(&*Noop::new("too-late")).unwrap(),
    )
    .unwrap();
    let error = expect_error(
        Method::POST,
        &format!("{}/v1/job/create", served.url),
        Some(envelope),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert!(error.message.contains("closed"), "{error:?}");
    assert!(queue.get("too-late").await.is_err());
    served.stop().await;
}
