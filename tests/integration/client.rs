//! The REST client against misbehaving upstreams.

use std::sync::atomic::Ordering;

use collector::polymarket::client::{ClientError, PolymarketClient, Route};

use crate::fake::{Fake, Fault};
use crate::{config_for, pg};

async fn client_for(fake: &Fake) -> PolymarketClient {
    let db = pg::TestDb { name: String::new(), url: "host=/nonexistent".into() };
    PolymarketClient::new(&config_for(&db, &fake.url()).upstream).unwrap()
}

fn url(fake: &Fake) -> url::Url {
    format!("{}/events/keyset?closed=false&limit=5", fake.url()).parse().unwrap()
}

#[tokio::test]
async fn rate_limits_server_errors_html_and_garbage_are_retried_and_counted() {
    let fake = Fake::start().await;
    fake.with(|s| s.events = (0..3).map(|e| crate::fake::event(e, 1)).collect());
    for f in [Fault::TooManyRequests { retry_after_secs: Some(1) }, Fault::ServerError, Fault::CloudflareHtml, Fault::MalformedJson] {
        fake.push_fault("events/keyset", f);
    }
    let client = client_for(&fake).await;
    let started = std::time::Instant::now();
    let body = client.get_json(Route::GammaListing, url(&fake)).await.unwrap();
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "Retry-After was honoured");
    let s = &client.stats;
    assert_eq!(s.rate_limited.load(Ordering::Relaxed), 1);
    assert_eq!(s.server_errors.load(Ordering::Relaxed), 1);
    assert_eq!(s.html_pages.load(Ordering::Relaxed), 1);
    assert_eq!(s.malformed_bodies.load(Ordering::Relaxed), 1);
    assert_eq!(s.retries.load(Ordering::Relaxed), 4);
    assert_eq!(fake.hits("events/keyset"), 5);
}

#[tokio::test]
async fn retries_are_bounded() {
    let fake = Fake::start().await;
    for _ in 0..10 {
        fake.push_fault("events/keyset", Fault::ServerError);
    }
    let client = client_for(&fake).await; // max_retries = 4
    let err = client.get_json(Route::GammaListing, url(&fake)).await.unwrap_err();
    assert!(matches!(err, ClientError::GaveUp { attempts: 5, .. }), "{err}");
    assert_eq!(fake.hits("events/keyset"), 5);
    assert_eq!(client.stats.gave_up.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = Fake::start().await;
    let client = client_for(&fake).await;
    let deep: url::Url = format!("{}/markets?offset=5000&limit=100", fake.url()).parse().unwrap();
    let err = client.get_json(Route::GammaListing, deep).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(err.to_string().contains("offset too large"), "{err}");
    assert_eq!(fake.hits("markets"), 1);
}

#[tokio::test]
async fn requests_carry_a_descriptive_user_agent() {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/ua",
        axum::routing::get(|h: HeaderMap| async move {
            let ua = h.get("user-agent").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            ([("content-type", "application/json")], serde_json::json!({ "ua": ua }).to_string())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let fake = Fake::start().await;
    let client = client_for(&fake).await;
    let body = client.get_json(Route::GammaListing, format!("http://{addr}/ua").parse().unwrap()).await.unwrap();
    assert!(body["ua"].as_str().unwrap().starts_with("collector/"), "{body}");
}
