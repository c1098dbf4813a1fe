use super::*;
use roam_store::tuple::pack;

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

fn device(user: &str, device: &str) -> UserDevice {
    UserDevice {
        user: user.into(),
        device: device.into(),
    }
}

/// `(user, edge, conn)` of each session.
fn placed(sessions: &[Session]) -> Vec<(&str, &str, u64)> {
    sessions
        .iter()
        .map(|s| (s.user.as_str(), s.edge.as_str(), s.conn))
        .collect()
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
    let found = s
        .sessions_of_devices(&[device("alice", "phone")])
        .await
        .unwrap();
    assert_eq!(placed(&found), [("alice", "e2", 9)]);
    // Expiring the old edge leaves the new session alone.
    assert_eq!(s.expire_edge("e1", 1300).await.unwrap(), 0);
    assert_eq!(
        s.sessions_of_users(&users(&["alice"])).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_device_id_is_per_user_and_never_displaces_another_users_device() {
    let (_dir, s) = store().await;
    s.connect(new("bob", "phone", "e1", 1), 1000).await.unwrap();
    let c = s
        .connect(new("alice", "phone", "e2", 2), 1100)
        .await
        .unwrap();
    assert!(c.replaced.is_empty(), "alice replaced {:?}", c.replaced);
    // Each user's "phone" is their own: both online, each reached on its own connection.
    let both = s
        .sessions_of_devices(&[device("bob", "phone"), device("alice", "phone")])
        .await
        .unwrap();
    assert_eq!(placed(&both), [("bob", "e1", 1), ("alice", "e2", 2)]);
    // A device of a user who never connected it reaches no one.
    assert!(
        s.sessions_of_devices(&[device("carol", "phone")])
            .await
            .unwrap()
            .is_empty()
    );
    // Bob's phone reconnecting replaces bob's old connection only.
    let c = s.connect(new("bob", "phone", "e1", 3), 1200).await.unwrap();
    assert_eq!(placed(&c.replaced), [("bob", "e1", 1)]);
    let p = s.presence(&users(&["alice", "bob"])).await.unwrap();
    assert_eq!(placed(&p[0].sessions), [("alice", "e2", 2)]);
    assert_eq!(placed(&p[1].sessions), [("bob", "e1", 3)]);
    // Alice leaving ends her session, not bob's, and sets only her last-seen time.
    assert!(s.disconnect("alice", "phone", "e2", 2, 1300).await.unwrap());
    assert!(!s.disconnect("alice", "phone", "e1", 3, 1301).await.unwrap());
    let p = s.presence(&users(&["alice", "bob"])).await.unwrap();
    assert_eq!((p[0].sessions.len(), p[0].last_seen_ms), (0, Some(1300)));
    assert_eq!(placed(&p[1].sessions), [("bob", "e1", 3)]);
    assert_eq!(
        placed(
            &s.sessions_of_devices(&[device("bob", "phone")])
                .await
                .unwrap()
        ),
        [("bob", "e1", 3)]
    );
}

#[tokio::test]
async fn ids_that_join_differently_name_different_devices() {
    // "a" + "b/c" and "a/b" + "c" would be one slash-joined name; they are two devices.
    let (_dir, s) = store().await;
    s.connect(new("a", "b/c", "e1", 1), 1000).await.unwrap();
    let c = s.connect(new("a/b", "c", "e1", 2), 1000).await.unwrap();
    assert!(c.replaced.is_empty());
    let found = s
        .sessions_of_devices(&[device("a", "b/c"), device("a/b", "c"), device("a", "b")])
        .await
        .unwrap();
    assert_eq!(placed(&found), [("a", "e1", 1), ("a/b", "e1", 2)]);
}

#[tokio::test]
async fn the_upgrade_clears_the_old_device_index_and_refuses_a_newer_layout() {
    let (_dir, s) = store().await;
    // A layout-1 store: a session and its device index row, no layout marker.
    let index_row = pack(&("sess", 2i64, "phone"));
    let row = index_row.clone();
    s.store
        .transact(move |tx| {
            tx.set(&row, &encode(V1, &("bob",)))?;
            Ok(())
        })
        .await
        .unwrap();
    s.connect(new("bob", "phone", "e1", 1), 1000).await.unwrap();
    s.upgrade().await.unwrap();
    s.upgrade().await.unwrap();
    let (index, marker) = s
        .store
        .transact(move |tx| Ok((tx.get(&index_row)?, tx.get(&keys::layout())?)))
        .await
        .unwrap();
    assert_eq!(index, None, "the old index is gone");
    assert_eq!(marker.as_deref(), Some(&encode(V1, &(LAYOUT,))[..]));
    assert_eq!(
        s.sessions_of_users(&users(&["bob"])).await.unwrap().len(),
        1,
        "sessions survive the upgrade"
    );

    s.store
        .transact(|tx| {
            tx.set(&keys::layout(), &encode(V1, &(LAYOUT + 1,)))?;
            Ok(())
        })
        .await
        .unwrap();
    let err = s.upgrade().await.unwrap_err().to_string();
    assert!(err.contains("newer than this build"), "{err}");
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
