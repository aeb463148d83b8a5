//! The REST service of amboy and its clients (amboy's `rest` package), on axum and reqwest.
//!
//! [`RestService`] serves a queue (create a job from its interchange JSON, fetch it, its
//! status, wait for it or for every job), its management (any
//! [`Manager`](amboy_management::Manager)), an abortable pool's running jobs and a queue
//! group's, under `/v1`, with an OpenAPI document at `/v1/openapi.json`. Errors are JSON with a
//! stable `code` ([`ErrorBody`]); a bearer token, when configured, guards every route; bodies
//! are size-limited; requests are traced; shutdown is graceful. With the `prometheus` feature,
//! `GET /metrics` serves the job metrics ([`amboy_core::metrics`]) for Prometheus.
//!
//! The clients ([`QueueClient`], [`ManagementClient`], [`PoolClient`], [`GroupPoolClient`])
//! share a [`Connection`]; [`ManagementClient`] implements `Manager`, so code written against
//! management runs locally or remotely. A failed request comes back as the
//! [`amboy_core::Error`] kind its code names.
//!
//! amboy's REST bugs are fixed (reference §16, fix 10): one response per request, the pool
//! clients' paths match the service's, waits have a real timeout, the status key is `status`.
//!
//! Depends on `amboy-core`, `amboy-registry` (jobs travel as their interchange form) and
//! `amboy-management`.
//!
//! Invariants: a refused request stores nothing and changes nothing; no input a client sends
//! panics the service.

mod client;
mod error;
mod openapi;
mod server;
mod wire;

/// Installs a Prometheus recorder as the process's `metrics` recorder and returns its handle,
/// for [`RestService::metrics`]. Install it before queues start: metrics registered before
/// are not recorded. Fails if the process has a recorder already.
#[cfg(feature = "prometheus")]
pub fn install_prometheus() -> amboy_core::Result<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|error| {
            amboy_core::Error::invalid(format!("cannot install the Prometheus recorder: {error}"))
        })
}

#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::PrometheusHandle;

pub use client::{Connection, GroupPoolClient, ManagementClient, PoolClient, QueueClient};
pub use server::RestService;
pub use wire::{
    CompletedResponse, CreateResponse, ErrorBody, JobStatusResponse, RunningJob, StatusResponse,
};
