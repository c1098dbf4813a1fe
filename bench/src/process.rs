//! What every process of a run (the parent and idle-conns' workers) does to itself.

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit; returns the soft limit
/// in force afterwards. A private server started afterwards inherits it.
pub(crate) fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.unwrap_or(u64::MAX);
        }
    }
    limit.current.unwrap_or(u64::MAX)
}
