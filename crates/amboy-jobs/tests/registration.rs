//! A program that never names the built-in job types keeps their registrations by calling
//! `register_builtin_jobs` (without the call, the linker drops them: this test binary would
//! then see neither type registered).

#[test]
fn register_builtin_jobs_keeps_the_registrations() {
    amboy_jobs::register_builtin_jobs();
    assert!(amboy_registry::is_registered_job_type("shell"));
    assert!(amboy_registry::is_registered_job_type("group"));
}
