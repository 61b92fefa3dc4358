//! A fault hook for tests of supervision and the watchdog: `COLLECTOR_FAULT_INJECT` =
//! `panic:<task>` (every pass panics), `panic-once:<task>` (the task panics once, after its
//! first pass or, for a stream shard, its first data frame), `wedge:<task>` (the second pass
//! never ends) or `stubborn:<task>` (the second pass never ends and ignores the stop
//! request). `<task>` is a polling collector's name or `shard` (every stream shard).
//! Unset in production; read once at start.

use std::sync::atomic::{AtomicBool, Ordering};

/// What to do to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Panic,
    PanicOnce,
    Wedge,
    Stubborn,
}

/// The injected fault for `task`, if any.
pub fn for_task(spec: Option<&str>, task: &str) -> Option<Fault> {
    let (kind, name) = spec?.split_once(':')?;
    if name != task {
        return None;
    }
    match kind {
        "panic" => Some(Fault::Panic),
        "panic-once" => Some(Fault::PanicOnce),
        "wedge" => Some(Fault::Wedge),
        "stubborn" => Some(Fault::Stubborn),
        _ => None,
    }
}

/// The spec from the environment.
pub fn from_env() -> Option<String> {
    std::env::var("COLLECTOR_FAULT_INJECT").ok().filter(|s| !s.is_empty())
}

static FIRED: AtomicBool = AtomicBool::new(false);

/// For `PanicOnce`: `true` the first time it is asked in this process, then never again.
pub fn fire_once() -> bool {
    !FIRED.swap(true, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_and_target() {
        assert_eq!(for_task(Some("panic:books"), "books"), Some(Fault::Panic));
        assert_eq!(for_task(Some("panic-once:shard"), "shard"), Some(Fault::PanicOnce));
        assert_eq!(for_task(Some("wedge:books"), "books"), Some(Fault::Wedge));
        assert_eq!(for_task(Some("panic:books"), "catalog"), None);
        assert_eq!(for_task(Some("explode:books"), "books"), None);
        assert_eq!(for_task(None, "books"), None);
    }
}
