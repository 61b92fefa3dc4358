//! Polymarket's public APIs: the REST client (budgets, retries), payload decoding, and the
//! types of Gamma (catalog) and CLOB (books).

pub mod budget;
pub mod client;
pub mod clob;
pub mod data;
pub mod decode;
pub mod gamma;
pub mod retry;
pub mod ws;

/// The project's Polymarket fixtures (`tests/fixtures/polymarket/`, written from the documented
/// upstream shapes), for unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    pub fn text(rel: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/polymarket/");
        std::fs::read_to_string(format!("{path}{rel}")).expect("fixture under tests/fixtures")
    }

    pub fn json(rel: &str) -> serde_json::Value {
        serde_json::from_str(&text(rel)).expect("fixture is JSON")
    }
}
