//! The documentation, run as written: every `curl` example of docs/api.md, in order, against a
//! real server, the way a new user would paste them (`$API` and `$KEY` set as the page says).
//! An example must succeed (2xx) unless the page shows its answer as an error on the next
//! line (`# {"error": ...}`): then it must be refused (4xx).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::path::Path;
use std::process::Command;

/// One example: the command, and whether the page shows it refused.
#[derive(Debug, PartialEq)]
struct Example {
    command: String,
    refused: bool,
}

/// The `curl` commands of every `sh` block in `markdown`, in order, with `\` continuations
/// joined. Other lines (comments, variable assignments) are left out.
fn curl_commands(markdown: &str) -> Vec<Example> {
    let mut commands: Vec<Example> = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if in_sh
            && pending.is_empty()
            && trimmed.starts_with("# {\"error\"")
            && let Some(last) = commands.last_mut()
        {
            last.refused = true;
        }
        if !in_sh || (pending.is_empty() && !trimmed.starts_with("curl ")) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                commands.push(Example {
                    command: std::mem::take(&mut pending),
                    refused: false,
                });
            }
        }
    }
    commands
}

#[test]
fn curl_commands_are_found_with_their_continuations() {
    let md = "text\n```sh\nKEY=x\n# a comment\ncurl -s $API/a \\\n  -d '{}'\ncurl b\n# {\"error\": {}}\n```\n```json\ncurl c\n```\n";
    let example = |command: &str, refused| Example {
        command: command.into(),
        refused,
    };
    assert_eq!(
        curl_commands(md),
        [
            example("curl -s $API/a -d '{}'", false),
            example("curl b", true)
        ]
    );
}

#[test]
fn every_curl_example_of_the_api_page_works_as_written() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let markdown = std::fs::read_to_string(&page).expect("docs/api.md");
    let commands = curl_commands(&markdown);
    assert!(commands.len() >= 10, "found only {commands:?}");

    let server = roam_tests::start("");
    let api = format!("http://{}", server.addr("admin").expect("admin address"));
    let key = roam_tests::api_key(&server);
    for Example { command, refused } in &commands {
        // The status code last, on a line of its own, after whatever the example prints
        // (curl wrapped, so a trailing comment on the example's line stays a comment).
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "curl() {{ command curl -w '\\n%{{http_code}}' \"$@\"; }}\n{command}"
            ))
            .env("API", &api)
            .env("KEY", &key)
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let status = stdout.lines().last().unwrap_or("");
        let expected = if *refused { '4' } else { '2' };
        assert!(
            out.status.success() && status.starts_with(expected),
            "docs/api.md: `{command}` answered {status} ({expected}xx expected): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(server.stop().unwrap().code(), Some(0));
}
