//! A fault hook for tests of supervision and the watchdog: `COLLECTOR_FAULT_INJECT` =
//! `panic:<collector>` (every pass panics), `wedge:<collector>` (the second pass never ends)
//! or `stubborn:<collector>` (the second pass never ends and ignores the stop request).
//! Unset in production; read once at start.

/// What to do to one collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Panic,
    Wedge,
    Stubborn,
}

/// The injected fault for `collector`, if any.
pub fn for_collector(spec: Option<&str>, collector: &str) -> Option<Fault> {
    let (kind, name) = spec?.split_once(':')?;
    if name != collector {
        return None;
    }
    match kind {
        "panic" => Some(Fault::Panic),
        "wedge" => Some(Fault::Wedge),
        "stubborn" => Some(Fault::Stubborn),
        _ => None,
    }
}

/// The spec from the environment.
pub fn from_env() -> Option<String> {
    std::env::var("COLLECTOR_FAULT_INJECT").ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_and_target() {
        assert_eq!(for_collector(Some("panic:books"), "books"), Some(Fault::Panic));
        assert_eq!(for_collector(Some("wedge:books"), "books"), Some(Fault::Wedge));
        assert_eq!(for_collector(Some("panic:books"), "catalog"), None);
        assert_eq!(for_collector(Some("explode:books"), "books"), None);
        assert_eq!(for_collector(None, "books"), None);
    }
}
