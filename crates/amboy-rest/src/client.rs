//! The clients: [`QueueClient`], [`ManagementClient`] (a [`Manager`]), [`PoolClient`] and
//! [`GroupPoolClient`], over one [`Connection`].

use std::time::Duration;

use amboy_core::{Error, Job, JobInfo, Result};
use amboy_management::{
    GroupedId, JobDetail, JobPage, JobQuery, JobTypeCount, Manager, StatusFilter,
};
use amboy_registry::JobInterchange;
use async_trait::async_trait;
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;

use crate::error::client_error;
use crate::wire::{
    CompletedResponse, CreateResponse, ErrorBody, JobStatusResponse, RunningJob, StatusResponse,
};

/// How long a request may take beyond the wait it asks for.
const MARGIN: Duration = Duration::from_secs(10);

/// Where a service is and how to reach it: its base URL (`http://host:port`, or with a path
/// prefix the service is nested under), an optional bearer token, and the HTTP client.
///
/// Clone it freely: clones share the HTTP client's connections.
#[derive(Debug, Clone)]
pub struct Connection {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Connection {
    /// A connection to the service at `base_url` (`http://…`, or `https://…` with the crate's
    /// `rustls` feature). Requests time out after 30 seconds, waits after their own timeout
    /// and 10 seconds more.
    pub fn new(base_url: impl AsRef<str>) -> Result<Self> {
        let base = base_url.as_ref().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(format!(
                "service URL '{base}' must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| Error::invalid(format!("cannot build an HTTP client: {error}")))?;
        Ok(Connection {
            http,
            base,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Uses `http` (its proxies, TLS roots, timeouts) instead of a client of its own.
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The service's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and reads its JSON answer; a failure comes back as the [`Error`] kind
    /// its code names (`id` is the job the request is about, for the error).
    async fn send<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        id: Option<&str>,
    ) -> Result<T> {
        match self.send_raw(request).await? {
            Ok(value) => Ok(value),
            Err((status, body)) => Err(client_error(status, body, id)),
        }
    }

    /// Sends a request: its JSON answer, or the service's error status and body; `Err` when
    /// there is no answer to read.
    async fn send_raw<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<std::result::Result<T, (u16, ErrorBody)>> {
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Ok)
                .map_err(|error| Error::Backend {
                    message: format!(
                        "amboy service answered {status} with a body that does not read: {error}"
                    ),
                    source: None,
                });
        }
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            code: "internal".into(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        });
        Ok(Err((status.as_u16(), body)))
    }

    /// A wait: its answer, `None` when the service says the time ran out (408 `timeout`).
    async fn wait<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        id: Option<&str>,
    ) -> Result<Option<T>> {
        match self.send_raw(request).await? {
            Ok(value) => Ok(Some(value)),
            Err((408, body)) if body.code == "timeout" => Ok(None),
            Err((status, body)) => Err(client_error(status, body, id)),
        }
    }
}

fn transport(error: reqwest::Error) -> Error {
    Error::Backend {
        message: format!("could not reach the amboy service: {error}"),
        source: Some(std::sync::Arc::new(error)),
    }
}

/// Percent-encodes a path segment.
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

fn timeout_param(timeout: Duration) -> String {
    format!("{}ms", timeout.as_millis())
}

/// A client of the queue service.
#[derive(Debug, Clone)]
pub struct QueueClient {
    connection: Connection,
}

impl QueueClient {
    /// A client over `connection`.
    pub fn new(connection: Connection) -> Self {
        QueueClient { connection }
    }

    /// The queue's status.
    pub async fn status(&self) -> Result<StatusResponse> {
        let request = self.connection.request(Method::GET, "/v1/status");
        self.connection.send(request, None).await
    }

    /// Whether the queue is running.
    pub async fn running(&self) -> Result<bool> {
        Ok(self.status().await?.queue_running)
    }

    /// How many jobs wait to run.
    pub async fn pending_jobs(&self) -> Result<usize> {
        Ok(self.status().await?.pending_jobs)
    }

    /// Puts `job` (encoded as its interchange form) in the service's queue; returns its ID.
    pub async fn submit_job(&self, job: &dyn Job) -> Result<String> {
        let envelope = JobInterchange::from_job(job)?;
        Ok(self.submit_interchange(&envelope).await?.id)
    }

    /// Puts a job in its interchange form.
    pub async fn submit_interchange(&self, envelope: &JobInterchange) -> Result<CreateResponse> {
        let request = self
            .connection
            .request(Method::POST, "/v1/job/create")
            .json(envelope);
        self.connection.send(request, Some(&envelope.name)).await
    }

    /// A job's interchange form.
    pub async fn fetch_job(&self, id: &str) -> Result<JobInterchange> {
        let request = self
            .connection
            .request(Method::GET, &format!("/v1/job/{}", segment(id)));
        self.connection.send(request, Some(id)).await
    }

    /// Where a job stands.
    pub async fn job_status(&self, id: &str) -> Result<JobStatusResponse> {
        let request = self
            .connection
            .request(Method::GET, &format!("/v1/job/status/{}", segment(id)));
        self.connection.send(request, Some(id)).await
    }

    /// Whether a job finished and will not run again.
    pub async fn job_complete(&self, id: &str) -> Result<bool> {
        Ok(self.job_status(id).await?.completed)
    }

    /// Waits up to `timeout` for a job to finish: its status once it did, `None` if the time
    /// ran out.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<Option<JobStatusResponse>> {
        let request = self
            .connection
            .request(Method::GET, &format!("/v1/job/wait/{}", segment(id)))
            .query(&[("timeout", timeout_param(timeout))])
            .timeout(timeout + MARGIN);
        self.connection.wait(request, Some(id)).await
    }

    /// Waits up to `timeout` for every job of the queue to finish: `true` if they did.
    pub async fn wait_all(&self, timeout: Duration) -> Result<bool> {
        let request = self
            .connection
            .request(Method::GET, "/v1/status/wait")
            .query(&[("timeout", timeout_param(timeout))])
            .timeout(timeout + MARGIN);
        Ok(self
            .connection
            .wait::<StatusResponse>(request, None)
            .await?
            .is_some())
    }
}

/// A client of the management service: a [`Manager`], so that code written against
/// management runs locally or remotely.
#[derive(Debug, Clone)]
pub struct ManagementClient {
    connection: Connection,
}

impl ManagementClient {
    /// A client over `connection`.
    pub fn new(connection: Connection) -> Self {
        ManagementClient { connection }
    }

    async fn complete(&self, path: String, id: Option<&str>) -> Result<u64> {
        let request = self.connection.request(
            Method::POST,
            &format!("/v1/management/jobs/mark_complete/{path}"),
        );
        let done: CompletedResponse = self.connection.send(request, id).await?;
        Ok(done.completed)
    }
}

#[async_trait]
impl Manager for ManagementClient {
    async fn job_status(&self, filter: StatusFilter) -> Result<Vec<JobTypeCount>> {
        let request = self
            .connection
            .request(Method::GET, &format!("/v1/management/status/{filter}"));
        self.connection.send(request, None).await
    }

    async fn job_ids_by_state(
        &self,
        job_type: &str,
        filter: StatusFilter,
    ) -> Result<Vec<GroupedId>> {
        let request = self.connection.request(
            Method::GET,
            &format!(
                "/v1/management/id/status/{filter}/type/{}",
                segment(job_type)
            ),
        );
        self.connection.send(request, None).await
    }

    async fn complete_job(&self, id: &str) -> Result<()> {
        self.complete(format!("id/{}", segment(id)), Some(id))
            .await
            .map(|_| ())
    }

    async fn complete_jobs(&self, filter: StatusFilter) -> Result<u64> {
        self.complete(format!("status/{filter}"), None).await
    }

    async fn complete_jobs_by_type(&self, filter: StatusFilter, job_type: &str) -> Result<u64> {
        self.complete(format!("status/{filter}/type/{}", segment(job_type)), None)
            .await
    }

    async fn complete_jobs_by_pattern(&self, filter: StatusFilter, pattern: &str) -> Result<u64> {
        self.complete(
            format!("status/{filter}/pattern/{}", segment(pattern)),
            None,
        )
        .await
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<JobPage> {
        let mut params: Vec<(&str, String)> = vec![
            ("filter", query.filter.to_string()),
            ("limit", query.limit.to_string()),
        ];
        if let Some(job_type) = &query.job_type {
            params.push(("type", job_type.clone()));
        }
        if let Some(group) = &query.group {
            params.push(("group", group.clone()));
        }
        if let Some(after) = query.created_after {
            params.push(("created_after", after.to_rfc3339()));
        }
        if let Some(before) = query.created_before {
            params.push(("created_before", before.to_rfc3339()));
        }
        if let Some(cursor) = &query.after {
            params.push(("after_group", cursor.group.clone()));
            params.push(("after_id", cursor.id.clone()));
            params.push(("after_attempt", cursor.attempt.to_string()));
        }
        let request = self
            .connection
            .request(Method::GET, "/v1/management/jobs")
            .query(&params);
        self.connection.send(request, None).await
    }

    async fn job(&self, id: &str) -> Result<JobDetail> {
        let request = self
            .connection
            .request(Method::GET, &format!("/v1/management/job/{}", segment(id)));
        self.connection.send(request, Some(id)).await
    }

    async fn requeue_job(&self, id: &str) -> Result<JobInfo> {
        let request = self.connection.request(
            Method::POST,
            &format!("/v1/management/jobs/requeue/id/{}", segment(id)),
        );
        self.connection.send(request, Some(id)).await
    }
}

/// A client of an abortable pool's service (`/v1/pool`), or of a group's (`/v1/group`) with
/// [`GroupPoolClient`].
#[derive(Debug, Clone)]
pub struct PoolClient {
    connection: Connection,
    prefix: &'static str,
}

impl PoolClient {
    /// A client of the pool service over `connection`.
    pub fn new(connection: Connection) -> Self {
        PoolClient {
            connection,
            prefix: "/v1/pool",
        }
    }

    /// The IDs of the jobs running.
    pub async fn running_jobs(&self) -> Result<Vec<String>> {
        let request = self
            .connection
            .request(Method::GET, &format!("{}/jobs/list", self.prefix));
        self.connection.send(request, None).await
    }

    /// Whether a job is running.
    pub async fn is_running(&self, id: &str) -> Result<bool> {
        let request = self
            .connection
            .request(Method::GET, &format!("{}/job/{}", self.prefix, segment(id)));
        match self.connection.send::<RunningJob>(request, Some(id)).await {
            Ok(_) => Ok(true),
            Err(error) if error.is_job_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Aborts a running job; a job not running is a job-not-found error.
    pub async fn abort_job(&self, id: &str) -> Result<RunningJob> {
        let request = self.connection.request(
            Method::DELETE,
            &format!("{}/job/{}", self.prefix, segment(id)),
        );
        self.connection.send(request, Some(id)).await
    }

    /// Aborts every running job.
    pub async fn abort_all(&self) -> Result<()> {
        let request = self
            .connection
            .request(Method::DELETE, &format!("{}/jobs/abort", self.prefix));
        self.connection
            .send::<serde_json::Value>(request, None)
            .await
            .map(|_| ())
    }
}

/// A client of a queue group's pools (`/v1/group`): what [`PoolClient`] does, across every
/// queue of the group, naming each job's group.
#[derive(Debug, Clone)]
pub struct GroupPoolClient {
    pool: PoolClient,
}

impl GroupPoolClient {
    /// A client of the group service over `connection`.
    pub fn new(connection: Connection) -> Self {
        GroupPoolClient {
            pool: PoolClient {
                connection,
                prefix: "/v1/group",
            },
        }
    }

    /// The jobs running, with their groups.
    pub async fn running_jobs(&self) -> Result<Vec<RunningJob>> {
        let request = self
            .pool
            .connection
            .request(Method::GET, "/v1/group/jobs/list");
        self.pool.connection.send(request, None).await
    }

    /// Whether a job is running in any queue of the group.
    pub async fn is_running(&self, id: &str) -> Result<bool> {
        self.pool.is_running(id).await
    }

    /// Aborts a running job wherever it runs.
    pub async fn abort_job(&self, id: &str) -> Result<RunningJob> {
        self.pool.abort_job(id).await
    }

    /// Aborts every running job of every queue.
    pub async fn abort_all(&self) -> Result<()> {
        self.pool.abort_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("job-1.a_b~"), "job-1.a_b~");
        assert_eq!(segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(segment("^(x|y)$"), "%5E%28x%7Cy%29%24");
    }

    #[test]
    fn urls_must_be_http() {
        assert!(Connection::new("localhost:3000").is_err());
        let connection = Connection::new("http://localhost:3000/").expect("valid");
        assert_eq!(connection.base_url(), "http://localhost:3000");
    }
}
