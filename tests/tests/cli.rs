//! The `roam` command line: configuration faults, `--print-config`, `roam bench`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::net::TcpListener;
use std::process::{Command, Output};

use roam_tests::roam_bin;

/// Runs `roam` with `args`, no inherited `ROAM_*` variables, warnings-only logging.
fn roam(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(roam_bin());
    cmd.args(args).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("ROAM_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("roam.toml");
    let data = dir.path().join("data");
    let text = format!("data = {:?}\n{text}", data.display().to_string());
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Port-0 listeners so a faulty config is the only reason to fail.
const EPHEMERAL: &str = "[listen]\nclient_tcp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n";

#[test]
fn bad_config_exits_nonzero_with_one_line_naming_the_fault() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let files = tempfile::tempdir().unwrap();
    let not_pem = files.path().join("cert.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let (dir_path, not_pem) = (files.path().display(), not_pem.display());
    let cases = [
        ("unknown key", "colour = \"blue\"\n".to_owned(), "colour"),
        (
            "bad port",
            "[listen]\nadmin = \"127.0.0.1:70000\"\n".to_owned(),
            "invalid socket address",
        ),
        (
            "unreadable cert",
            format!(
                "{EPHEMERAL}[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n"
            ),
            "/nonexistent/cert.pem",
        ),
        (
            "cert path is a directory",
            format!("{EPHEMERAL}[tls]\ncert = \"{dir_path}\"\nkey = \"{dir_path}\"\n"),
            "cannot read",
        ),
        (
            "cert file is not PEM",
            format!("{EPHEMERAL}[tls]\ncert = \"{not_pem}\"\nkey = \"{not_pem}\"\n"),
            "holds no PEM certificate",
        ),
        (
            "port in use",
            format!("[listen]\nclient_tcp = \"{busy_addr}\"\nadmin = \"127.0.0.1:0\"\n"),
            "listen.client_tcp",
        ),
    ];
    for (what, text, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = roam(&["serve", "--config", &config_file(&dir, &text)], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: exited 0");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line expected:\n{stderr}");
        assert!(lines[0].starts_with("error: "), "{what}: {stderr}");
        assert!(
            lines[0].contains(needle),
            "{what}: {needle:?} not in {stderr}"
        );
        if what == "port in use" {
            assert!(lines[0].contains(&busy_addr), "{stderr}");
        }
    }
    let out = roam(&["serve", "--config", "/nonexistent/roam.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/roam.toml"));
}

#[test]
fn print_config_applies_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        &dir,
        "role = \"core\"\n[listen]\nadmin = \"127.0.0.1:1111\"\nraw = \"127.0.0.1:2222\"\n",
    );
    let out = roam(
        &[
            "serve",
            "--config",
            &file,
            "--print-config",
            "--data",
            "/flag/data",
            "--role",
            "edge",
        ],
        &[
            ("ROAM_LISTEN_ADMIN", "127.0.0.1:3333"),
            ("ROAM_DATA", "/env/data"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_eq!(printed["data"].as_str(), Some("/flag/data"));
    assert_eq!(printed["role"].as_str(), Some("edge"));
    assert_eq!(printed["listen"]["admin"].as_str(), Some("127.0.0.1:3333"));
    assert_eq!(printed["listen"]["raw"].as_str(), Some("127.0.0.1:2222"));
    assert_eq!(printed["store"].as_str(), Some("embedded:/flag/data/store"));

    let out = roam(&["serve", "--print-config"], &[("ROAM_LISTEN_TYPO", "1")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ROAM_LISTEN_TYPO"));
}

fn last_json_line(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"))
}

/// Asserts that each of `figures` is a number in `json`, zero allowed (CPU time is counted
/// in clock ticks of 10 ms: a short run may spend none).
fn assert_numbers(json: &serde_json::Value, figures: &[&str]) {
    for figure in figures {
        assert!(
            json[figure].as_f64().is_some_and(|v| v >= 0.0),
            "{figure} missing or negative: {json}"
        );
    }
}

/// Asserts that each of `figures` is a number above zero in `json`.
fn assert_positive(json: &serde_json::Value, figures: &[&str]) {
    for figure in figures {
        assert!(
            json[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure} missing or zero: {json}"
        );
    }
}

#[test]
fn bench_frame_codec_prints_its_figures_as_the_last_json_line() {
    let out = roam(&["bench", "frame-codec", "--duration", "0.3"], &[]);
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "frame-codec");
    assert!(
        json["decode_frames_per_sec"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(
        json["encode_frames_per_sec"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(json["machine"].as_str().unwrap().ends_with(" cores"));
}

#[test]
fn bench_handshake_runs_its_own_server_and_reads_its_proc() {
    let out = roam(
        &[
            "bench",
            "handshake",
            "--duration",
            "1",
            "--connections",
            "4",
        ],
        &[],
    );
    let json = last_json_line(&out);
    assert!(json["handshakes_per_sec"].as_u64().unwrap() > 0, "{json}");
    assert!(
        json["server_cpu_us_per_handshake"].as_f64().unwrap() > 0.0,
        "{json}"
    );
    assert!(
        json["server_rss_bytes"].as_u64().unwrap() > 1_000_000,
        "{json}"
    );
    assert_eq!(json["errors"], 0, "{json}");
}

#[test]
fn bench_refuses_bad_arguments_with_a_clear_message() {
    for (args, needle) in [
        (&["bench", "warp-drive"][..], "unknown scenario"),
        (
            &["bench", "frame-codec", "--duration", "0"][..],
            "--duration",
        ),
        (
            &["bench", "handshake", "--connections", "0"][..],
            "--connections",
        ),
        (
            &["bench", "handshake", "--target", "127.0.0.1:1"][..],
            "--server-pid",
        ),
        (
            &["bench", "idle-conns", "--transport", "sctp"][..],
            "idle-conns offers raw, ws, quic and h3",
        ),
        (&["bench", "room-fanout", "--members", "0"][..], "--members"),
        (&["bench", "chat", "--connections", "3"][..], "must be even"),
    ] {
        let out = roam(args, &[]);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn token_is_signed_with_the_data_dirs_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let out = roam(
        &[
            "token", "--user", "alice", "--device", "phone", "--ttl", "600", "--data", &data_arg,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let secret = roam_core::auth::Secret::load_or_create(&data).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verifier = roam_core::auth::Verifier::new(&secret);
    let claims = verifier.verify(&token, "phone", now).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.did.as_deref()),
        ("alice", Some("phone"))
    );
    assert!(claims.exp <= now + 600);

    let out = roam(&["token", "--user", "", "--data", &data_arg], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-empty user"));
}

#[test]
fn bench_store_scenarios_print_their_figures_as_the_last_json_line() {
    let args = ["--duration", "0.3", "--connections", "8"];
    let out = roam(&[&["bench", "store-append"][..], &args].concat(), &[]);
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "store-append", "{json}");
    assert_positive(
        &json,
        &[
            "appends_per_sec",
            "commit_p50_us",
            "commit_p99_us",
            "hot_appends_per_sec",
            "hot_commit_p50_us",
            "hot_commit_p99_us",
            "rss_bytes",
            "cpu_us_per_append",
            "hot_cpu_us_per_append",
        ],
    );
    assert_eq!(json["errors"], 0, "{json}");
    assert!(json["machine"].as_str().unwrap().ends_with(" cores"));

    let out = roam(&[&["bench", "store-read"][..], &args].concat(), &[]);
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "store-read", "{json}");
    assert_positive(
        &json,
        &[
            "reads_per_sec",
            "read_100_p50_us",
            "read_100_p99_us",
            "rss_bytes",
            "cpu_us_per_read",
        ],
    );
    assert_eq!(json["errors"], 0, "{json}");
}

#[test]
fn bench_push_measures_api_to_edge_delivery() {
    let out = roam(
        &["bench", "push", "--duration", "0.5", "--connections", "20"],
        &[],
    );
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "push", "{json}");
    assert!(
        json["api_pushes_per_sec"].as_u64().is_some_and(|v| v > 0),
        "{json}"
    );
    assert!(
        json["push_to_edge_p99_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{json}"
    );
    assert!(json["delivered"].as_u64().is_some_and(|v| v > 0), "{json}");
    assert_eq!(json["errors"], 0, "{json}");
    let out = roam(
        &[
            "bench",
            "push",
            "--target",
            "127.0.0.1:1",
            "--server-pid",
            "1",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop --target"));
}

#[test]
fn bench_roam_switch_loses_nothing_over_quic_nor_over_a_websocket_with_sync() {
    let out = roam(&["bench", "roam-switch", "--duration", "0.5"], &[]);
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "roam-switch", "{json}");
    for (figure, expected) in [
        ("quic_lost", 0),
        ("quic_same_connection", 1),
        ("h3_0rtt_accepted", 1),
        ("tcp_lost_after_sync", 0),
        ("tcp_reconnects", 2),
    ] {
        assert_eq!(json[figure], expected, "{figure}: {json}");
    }
    for figure in [
        "quic_interruption_ms",
        "tcp_interruption_ms",
        "h3_connect_new_ms",
        "h3_connect_resumed_ms",
    ] {
        assert!(
            json[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {json}"
        );
    }
}

#[test]
fn bench_ids_prints_every_figure_the_issue_names() {
    let out = roam(&["bench", "ids", "--duration", "1"], &[]);
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "ids", "{json}");
    assert_positive(
        &json,
        &[
            "segment_ids_per_sec_1t",
            "segment_ids_per_sec",
            "snowflake_ids_per_sec",
            "grpc_calls_per_sec",
            "grpc_batched_ids_per_sec",
        ],
    );
    assert_eq!(json["grpc_errors"], 0, "{json}");
}

/// Asserts that each of `figures` is a number in `json` (any sign: small runs can make a
/// difference of two RSS readings negative).
fn assert_present(json: &serde_json::Value, figures: &[&str]) {
    for figure in figures {
        assert!(json[figure].is_number(), "{figure} missing: {json}");
    }
}

#[test]
fn bench_idle_conns_holds_small_counts_over_each_transport() {
    for transport in ["raw", "ws", "quic", "h3"] {
        let out = roam(
            &[
                "bench",
                "idle-conns",
                "--transport",
                transport,
                "--connections",
                "20",
                "--duration",
                "0.2",
            ],
            &[],
        );
        let json = last_json_line(&out);
        assert_eq!(
            (&json["scenario"], &json["transport"]),
            (&"idle-conns".into(), &transport.into()),
            "{json}"
        );
        assert_positive(
            &json,
            &[
                "server_rss_bytes",
                "server_rss_before_bytes",
                "connect_per_sec",
            ],
        );
        assert_numbers(&json, &["server_cpu_us_per_conn"]);
        assert_present(&json, &["server_rss_per_conn_bytes", "server_online"]);
        for (figure, expected) in [
            ("connections", 20),
            ("established", 20),
            ("failed", 0),
            ("closed", 0),
            ("unexpected_frames", 0),
            ("workers", 1),
        ] {
            assert_eq!(json[figure], expected, "{figure}: {json}");
        }
    }
}

#[test]
fn bench_chat_stores_and_delivers_between_a_few_pairs() {
    let out = roam(
        &[
            "bench",
            "chat",
            "--connections",
            "6",
            "--rate",
            "60",
            "--duration",
            "0.5",
        ],
        &[],
    );
    let json = last_json_line(&out);
    assert_eq!(json["scenario"], "chat", "{json}");
    assert_numbers(
        &json,
        &["server_cpu_us_per_message", "client_cpu_us_per_message"],
    );
    assert_positive(
        &json,
        &[
            "messages_per_sec",
            "send_to_ack_p50_ms",
            "send_to_ack_p99_ms",
            "send_to_deliver_p50_ms",
            "send_to_deliver_p99_ms",
            "sent",
            "server_rss_bytes",
        ],
    );
    assert_present(&json, &["late_sends"]);
    assert_eq!(json["errors"], 0, "{json}");
    assert_eq!(json["connections"], 6, "{json}");
    assert_eq!(
        json["acked"], json["sent"],
        "every SEND acknowledged: {json}"
    );
    assert_eq!(
        json["delivered"], json["sent"],
        "every message pushed: {json}"
    );
}

#[test]
fn bench_room_fanout_delivers_to_a_small_room() {
    for transport in ["ws", "h3", "quic"] {
        room_fanout_delivers_to_a_small_room(transport);
    }
}

fn room_fanout_delivers_to_a_small_room(transport: &str) {
    let out = roam(
        &[
            "bench",
            "room-fanout",
            "--transport",
            transport,
            "--members",
            "20",
            "--rate",
            "20",
            "--duration",
            "0.5",
        ],
        &[],
    );
    let json = last_json_line(&out);
    assert_eq!(
        (&json["scenario"], &json["transport"]),
        (&"room-fanout".into(), &transport.into()),
        "{json}"
    );
    assert_numbers(
        &json,
        &["server_cpu_us_per_delivery", "client_cpu_us_per_delivery"],
    );
    assert_positive(
        &json,
        &[
            "deliveries_per_sec",
            "delivered_ratio",
            "delivery_p50_ms",
            "delivery_p99_ms",
            "delivery_max_ms",
            "published",
            "publish_per_sec",
            "api_p99_ms",
            "deliveries",
            "publishers",
            "server_rss_bytes",
        ],
    );
    assert_present(&json, &["rejected", "late_publishes"]);
    for (figure, expected) in [("members", 20), ("members_closed", 0), ("errors", 0)] {
        assert_eq!(json[figure], expected, "{figure}: {json}");
    }
}
