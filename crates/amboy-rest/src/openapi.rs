//! The OpenAPI document the service serves at `GET /v1/openapi.json`.

use serde_json::{Value, json};

/// Every route the service can serve, as (method, path) in OpenAPI's form.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/openapi.json"),
    ("get", "/v1/"),
    ("get", "/v1/status"),
    ("get", "/v1/status/wait"),
    ("post", "/v1/job/create"),
    ("get", "/v1/job/{id}"),
    ("get", "/v1/job/status/{id}"),
    ("get", "/v1/job/wait/{id}"),
    ("get", "/v1/management/status/{filter}"),
    ("get", "/v1/management/id/status/{filter}/type/{type}"),
    ("post", "/v1/management/jobs/mark_complete/id/{id}"),
    ("post", "/v1/management/jobs/mark_complete/status/{filter}"),
    (
        "post",
        "/v1/management/jobs/mark_complete/status/{filter}/type/{type}",
    ),
    (
        "post",
        "/v1/management/jobs/mark_complete/status/{filter}/pattern/{pattern}",
    ),
    ("get", "/v1/management/jobs"),
    ("get", "/v1/management/job/{id}"),
    ("post", "/v1/management/jobs/requeue/id/{id}"),
    ("get", "/v1/pool/jobs/list"),
    ("delete", "/v1/pool/jobs/abort"),
    ("get", "/v1/pool/job/{id}"),
    ("delete", "/v1/pool/job/{id}"),
    ("get", "/v1/group/jobs/list"),
    ("delete", "/v1/group/jobs/abort"),
    ("get", "/v1/group/job/{id}"),
    ("delete", "/v1/group/job/{id}"),
];

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array_of(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn path_parameter(name: &str) -> Value {
    let description = match name {
        "filter" => {
            "a status filter: pending, in-progress, stale, completed, retrying, stale-retrying, expired, set-aside or all"
        }
        "type" => "a job type's name",
        "pattern" => "a regular expression matched against job IDs (percent-encoded)",
        _ => "a job's ID",
    };
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

fn query_parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description,
            "schema": schema })
}

/// What a route answers when it succeeds, and which error codes it may answer.
fn operation(method: &str, path: &str) -> Value {
    let (summary, success, errors): (&str, Value, &[&str]) = match (method, path) {
        ("get", "/v1/openapi.json") => ("This document.", json!({ "type": "object" }), &[]),
        ("get", "/v1/" | "/v1/status") => {
            ("The queue's status.", schema("StatusResponse"), &["503"])
        }
        ("get", "/v1/status/wait") => (
            "Waits until every job of the queue finished.",
            schema("StatusResponse"),
            &["400", "408", "503"],
        ),
        ("post", "/v1/job/create") => (
            "Creates a job from its interchange JSON (amboy's JobInterchange).",
            schema("CreateResponse"),
            &["400", "409", "413", "503"],
        ),
        ("get", "/v1/job/{id}") => (
            "A job's interchange JSON.",
            schema("JobInterchange"),
            &["404"],
        ),
        ("get", "/v1/job/status/{id}") => {
            ("Where a job stands.", schema("JobStatusResponse"), &["404"])
        }
        ("get", "/v1/job/wait/{id}") => (
            "Waits until a job finished.",
            schema("JobStatusResponse"),
            &["400", "404", "408", "503"],
        ),
        ("get", "/v1/management/status/{filter}") => (
            "How many jobs of each type (and group) pass the filter.",
            array_of(schema("JobTypeCount")),
            &["400"],
        ),
        ("get", "/v1/management/id/status/{filter}/type/{type}") => (
            "The IDs of the jobs of a type passing the filter.",
            array_of(schema("GroupedId")),
            &["400"],
        ),
        ("post", "/v1/management/jobs/mark_complete/id/{id}") => {
            ("Completes one job.", schema("CompletedResponse"), &["404"])
        }
        ("post", path) if path.starts_with("/v1/management/jobs/mark_complete/status/") => (
            "Completes every unfinished job passing the filter (of the type, or whose ID matches the pattern).",
            schema("CompletedResponse"),
            &["400"],
        ),
        ("get", "/v1/management/jobs") => (
            "A page of jobs, by group, ID and attempt.",
            schema("JobPage"),
            &["400"],
        ),
        ("get", "/v1/management/job/{id}") => (
            "Every attempt of a job, and the latest in full.",
            schema("JobDetail"),
            &["404"],
        ),
        ("post", "/v1/management/jobs/requeue/id/{id}") => (
            "Enqueues a failed or expired job again, as its next attempt.",
            schema("JobInfo"),
            &["400", "404"],
        ),
        ("get", "/v1/pool/jobs/list") => (
            "The IDs of the jobs running.",
            array_of(json!({ "type": "string" })),
            &[],
        ),
        ("get", "/v1/group/jobs/list") => (
            "The jobs running in the group's queues this process holds.",
            array_of(schema("RunningJob")),
            &[],
        ),
        ("delete", "/v1/pool/jobs/abort" | "/v1/group/jobs/abort") => (
            "Aborts every running job.",
            json!({ "type": "object" }),
            &["500"],
        ),
        ("get", _) => ("Whether a job is running.", schema("RunningJob"), &["404"]),
        ("delete", _) => ("Aborts a running job.", schema("RunningJob"), &["404"]),
        _ => ("", json!({}), &[]),
    };
    let mut parameters: Vec<Value> = path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(path_parameter)
        .collect();
    if path.ends_with("/wait") || path.contains("/wait/") {
        parameters.push(query_parameter(
            "timeout",
            "how long to wait: 10s, 500ms, 2m or seconds (default 10s, at most 1h)",
            json!({ "type": "string" }),
        ));
    }
    if path == "/v1/management/jobs" {
        let text = json!({ "type": "string" });
        let time = json!({ "type": "string", "format": "date-time" });
        parameters.extend([
            query_parameter("filter", "a status filter (default all)", text.clone()),
            query_parameter("type", "only jobs of this type", text.clone()),
            query_parameter("group", "only jobs of this group", text.clone()),
            query_parameter(
                "created_after",
                "only jobs created at or after",
                time.clone(),
            ),
            query_parameter("created_before", "only jobs created before", time),
            query_parameter(
                "after_group",
                "the previous page's next.group",
                text.clone(),
            ),
            query_parameter("after_id", "the previous page's next.id", text),
            query_parameter(
                "after_attempt",
                "the previous page's next.attempt",
                json!({ "type": "integer" }),
            ),
            query_parameter(
                "limit",
                "jobs per page, 1 to 1000 (default 100)",
                json!({ "type": "integer" }),
            ),
        ]);
    }
    let mut responses = serde_json::Map::new();
    responses.insert(
        "200".into(),
        json!({ "description": "OK", "content": { "application/json": { "schema": success } } }),
    );
    for status in errors.iter().chain(&["401"]) {
        responses.insert(
            (*status).into(),
            json!({ "description": "an error", "content": { "application/json": { "schema": schema("Error") } } }),
        );
    }
    let mut operation =
        json!({ "summary": summary, "parameters": parameters, "responses": responses });
    if path == "/v1/job/create" {
        operation["requestBody"] = json!({ "required": true,
            "content": { "application/json": { "schema": schema("JobInterchange") } } });
    }
    operation
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path) in ROUTES {
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = operation(method, path);
    }
    let object = |properties: Value| json!({ "type": "object", "properties": properties });
    let text = json!({ "type": "string" });
    let count = json!({ "type": "integer", "minimum": 0 });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "amboy",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A queue of background jobs, its management and its worker pools. Every error answers with an Error body; with a token configured, every route needs 'Authorization: Bearer <token>'."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": object(json!({ "code": text, "message": text })),
                "StatusResponse": object(json!({ "status": text, "queue_running": { "type": "boolean" },
                    "pending_jobs": count, "supported_job_types": array_of(text.clone()) })),
                "CreateResponse": object(json!({ "id": text })),
                "JobStatusResponse": object(json!({ "id": text, "completed": { "type": "boolean" },
                    "job": schema("JobInfo") })),
                "CompletedResponse": object(json!({ "message": text, "completed": count })),
                "RunningJob": object(json!({ "id": text, "group": text, "status": text })),
                "JobTypeCount": object(json!({ "type": text, "group": text, "count": count })),
                "GroupedId": object(json!({ "id": text, "group": text })),
                "JobInfo": object(json!({ "id": text, "type": { "type": "object" },
                    "status": { "type": "object" }, "time": { "type": "object" },
                    "retry": { "type": "object" } })),
                "JobRecord": { "allOf": [schema("JobInfo"), object(json!({ "group": text }))] },
                "JobPage": object(json!({ "jobs": array_of(schema("JobRecord")),
                    "next": object(json!({ "group": text, "id": text, "attempt": count })) })),
                "JobDetail": object(json!({ "group": text, "id": text,
                    "attempts": array_of(schema("JobInfo")), "job": schema("JobInterchange") })),
                "JobInterchange": object(json!({ "name": text, "type": text, "version": { "type": "integer" },
                    "job": { "type": "object" } })),
            }
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
    })
}
