use super::*;

async fn store() -> (tempfile::TempDir, Sessions) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("embedded:{}", dir.path().join("s").display()))
        .await
        .unwrap();
    (dir, Sessions::new(store))
}

fn new<'a>(user: &'a str, device: &'a str, edge: &'a str, conn: u64) -> NewSession<'a> {
    NewSession {
        user,
        device,
        edge,
        conn,
        platform: "ios",
        transport: "ws",
    }
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn connect_disconnect_and_presence() {
    let (_dir, s) = store().await;
    let c = s
        .connect(new("alice", "phone", "e1", 1), 1000)
        .await
        .unwrap();
    assert!(c.replaced.is_empty());
    assert_eq!(c.heartbeat_secs, None);
    s.connect(new("alice", "laptop", "e2", 7), 1001)
        .await
        .unwrap();

    let p = &s.presence(&users(&["alice", "bob"])).await.unwrap();
    assert_eq!(p[0].sessions.len(), 2);
    assert_eq!(p[0].sessions[0].device, "laptop");
    assert_eq!(
        (p[0].sessions[1].edge.as_str(), p[0].sessions[1].conn),
        ("e1", 1)
    );
    assert!(p[1].sessions.is_empty());
    assert_eq!(p[1].last_seen_ms, None);

    assert!(s.disconnect("alice", "phone", "e1", 1, 2000).await.unwrap());
    assert!(
        !s.disconnect("alice", "phone", "e1", 1, 2001).await.unwrap(),
        "already gone"
    );
    let p = &s.presence(&users(&["alice"])).await.unwrap()[0];
    assert_eq!(p.sessions.len(), 1);
    assert_eq!(p.last_seen_ms, Some(2000));
}

#[tokio::test]
async fn a_reconnecting_device_replaces_its_old_session() {
    let (_dir, s) = store().await;
    s.connect(new("alice", "phone", "e1", 1), 1000)
        .await
        .unwrap();
    let c = s
        .connect(new("alice", "phone", "e2", 9), 1100)
        .await
        .unwrap();
    assert_eq!(c.replaced.len(), 1);
    assert_eq!((c.replaced[0].edge.as_str(), c.replaced[0].conn), ("e1", 1));
    // The old connection's late disconnect must not end the new session.
    assert!(!s.disconnect("alice", "phone", "e1", 1, 1200).await.unwrap());
    let found = s.sessions_of_devices(&users(&["phone"])).await.unwrap();
    assert_eq!((found[0].edge.as_str(), found[0].conn), ("e2", 9));
    // Expiring the old edge leaves the new session alone.
    assert_eq!(s.expire_edge("e1", 1300).await.unwrap(), 0);
    assert_eq!(
        s.sessions_of_users(&users(&["alice"])).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_device_id_moves_to_the_user_who_connects_with_it() {
    let (_dir, s) = store().await;
    s.connect(new("alice", "shared-tablet", "e1", 1), 1000)
        .await
        .unwrap();
    let c = s
        .connect(new("bob", "shared-tablet", "e1", 2), 1100)
        .await
        .unwrap();
    assert_eq!(c.replaced[0].user, "alice");
    assert!(
        s.sessions_of_users(&users(&["alice"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.sessions_of_devices(&users(&["shared-tablet"]))
            .await
            .unwrap()[0]
            .user,
        "bob"
    );
}

#[tokio::test]
async fn expiring_an_edge_ends_exactly_its_sessions() {
    let (_dir, s) = store().await;
    for i in 0..1200u64 {
        let (user, device) = (format!("u{i}"), format!("d{i}"));
        let edge = if i % 3 == 0 { "dead" } else { "alive" };
        s.connect(new(&user, &device, edge, i), 1000).await.unwrap();
    }
    assert_eq!(s.expire_edge("dead", 5000).await.unwrap(), 400);
    let all: Vec<String> = (0..1200).map(|i| format!("u{i}")).collect();
    let left = s.sessions_of_users(&all).await.unwrap();
    assert_eq!(left.len(), 800);
    assert!(left.iter().all(|x| x.edge == "alive"));
    let p = s.presence(&users(&["u0", "u1"])).await.unwrap();
    assert_eq!((p[0].sessions.len(), p[0].last_seen_ms), (0, Some(5000)));
    assert_eq!((p[1].sessions.len(), p[1].last_seen_ms), (1, None));
}

#[tokio::test]
async fn the_heartbeat_interval_is_remembered_across_reconnects() {
    let (_dir, s) = store().await;
    s.connect(new("alice", "phone", "e1", 1), 1000)
        .await
        .unwrap();
    s.set_heartbeat("alice", "phone", 150).await.unwrap();
    s.disconnect("alice", "phone", "e1", 1, 1100).await.unwrap();
    let c = s
        .connect(new("alice", "phone", "e1", 2), 1200)
        .await
        .unwrap();
    assert_eq!(c.heartbeat_secs, Some(150));
}
