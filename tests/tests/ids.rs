//! The ID service through the real binary: the business HTTP routes behind the API key.

use roam_tests::admin;
use serde_json::json;

#[tokio::test]
async fn ids_are_served_over_the_business_api() {
    let server = roam_tests::start("");
    let r = admin(
        &server,
        "POST",
        "/api/v1/ids/tags",
        Some(r#"{"tag": "msg", "step": 1000}"#),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin(&server, "GET", "/api/v1/ids/msg?count=5", None, None).await;
    let ids: Vec<u64> = serde_json::from_value(r.json()["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let r = admin(&server, "GET", "/api/v1/ids/snowflake?count=3", None, None).await;
    let flakes = r.json()["ids"].as_array().unwrap().clone();
    assert_eq!(flakes.len(), 3);
    assert!(
        flakes
            .iter()
            .all(|v| v.as_str().is_some_and(|s| s.parse::<u64>().is_ok())),
        "strings: {flakes:?}"
    );

    for (path, status, code) in [
        ("/api/v1/ids/nope", 404, "not_found"),
        ("/api/v1/ids/msg?count=0", 400, "invalid_argument"),
        ("/api/v1/ids/msg?count=1000000000", 400, "invalid_argument"),
    ] {
        let r = admin(&server, "GET", path, None, None).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (status, json!(code)),
            "{path}"
        );
    }
    let r = admin(&server, "GET", "/api/v1/ids/msg", None, Some("bad key")).await;
    assert_eq!(r.status, 401);
    let state = admin(&server, "GET", "/api/v1/ids/_state", None, None).await;
    assert_eq!(state.status, 200, "{}", state.body);
    assert_eq!(server.stop().unwrap().code(), Some(0));
}
