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
