//! The ID service through the real binary: the business HTTP routes behind the API key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

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

#[tokio::test]
async fn a_core_only_process_serves_ids_from_the_id_service_of_another() {
    use roam_bench::child::ChildServer;

    let ids = ChildServer::start_with(&roam_tests::roam_bin(), "", &["--role", "idsvc"])
        .unwrap_or_else(|e| panic!("roam serve --role idsvc: {e}"));
    let internal = ids
        .addr("internal")
        .expect("the ID service's internal address");
    let core = ChildServer::start_with(
        &roam_tests::roam_bin(),
        // Another data directory: the ID service's internal key is named explicitly.
        &format!(
            "[core]\nids = \"http://{internal}\"\n[internal]\nkey_file = {:?}\n",
            ids.data_dir().join("internal-key").display().to_string()
        ),
        &["--role", "core"],
    )
    .unwrap_or_else(|e| panic!("roam serve --role core: {e}"));

    let new_tag = Some(r#"{"tag": "msg", "step": 100}"#);
    let r = admin(&core, "POST", "/api/v1/ids/tags", new_tag, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin(&core, "POST", "/api/v1/ids/tags", new_tag, None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (409, json!("already_exists"))
    );

    let from_core = admin(&core, "GET", "/api/v1/ids/msg?count=5", None, None).await;
    let from_ids = admin(&ids, "GET", "/api/v1/ids/msg?count=5", None, None).await;
    let a: Vec<u64> = serde_json::from_value(from_core.json()["ids"].clone()).unwrap();
    let b: Vec<u64> = serde_json::from_value(from_ids.json()["ids"].clone()).unwrap();
    assert_eq!(a.len(), 5);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
    assert!(
        a.iter().all(|id| !b.contains(id)),
        "one allocator behind both: {a:?} {b:?}"
    );

    for (path, status, code) in [
        ("/api/v1/ids/nope", 404, "not_found"),
        ("/api/v1/ids/msg?count=0", 400, "invalid_argument"),
        ("/api/v1/ids/snowflake/abc", 400, "invalid_argument"),
    ] {
        let r = admin(&core, "GET", path, None, None).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (status, json!(code)),
            "{path}"
        );
    }

    let r = admin(&core, "GET", "/api/v1/ids/snowflake?count=1", None, None).await;
    let id = r.json()["ids"][0]
        .as_str()
        .expect("a snowflake as a string")
        .to_owned();
    let via_core = admin(
        &core,
        "GET",
        &format!("/api/v1/ids/snowflake/{id}"),
        None,
        None,
    )
    .await;
    let via_ids = admin(
        &ids,
        "GET",
        &format!("/api/v1/ids/snowflake/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(via_core.status, 200, "{}", via_core.body);
    assert_eq!(
        via_core.json(),
        via_ids.json(),
        "decoded by the service that issued it"
    );

    // The monitoring page belongs to the ID service's own process.
    assert_eq!(
        admin(&ids, "GET", "/api/v1/ids/_state", None, None)
            .await
            .status,
        200
    );

    // Without its ID service, core says so instead of making IDs up.
    assert_eq!(ids.stop().expect("stop").code(), Some(0));
    let r = admin(&core, "GET", "/api/v1/ids/msg", None, None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (503, json!("unavailable")),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(core.stop().expect("stop").code(), Some(0));
}
