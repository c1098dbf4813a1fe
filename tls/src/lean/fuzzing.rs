//! The record layer driven by arbitrary bytes: the body of the fuzz target `records` in
//! `tls/fuzz/` (built with the crate feature `fuzzing`), also run over the committed seed
//! corpus by a unit test.
//!
//! Each input runs on a fresh connection: a real handshake with a rustls client over an
//! in-memory pipe, then [`Records`] is fed a script read from the input — raw records (any
//! header, any body: mostly framing faults and `bad_record_mac`), records sealed under the
//! client's current key (any inner content type, content and padding: alerts, handshake
//! messages, data, empty records), `KeyUpdate`s with any `request_update` split over one or
//! two records, and our own writes with a tiny confidentiality limit (so our key refreshes).
//! The sealing key is the server's own receive key, so it follows every `KeyUpdate` the
//! server follows. Checked: nothing panics, every fault names an alert (but the peer's own
//! alert), sealed data opens to exactly what was sealed, and after a fault the script stops
//! (the stream fails the connection there).

use std::sync::Arc;

use super::records::{
    CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, Content, HANDSHAKE_KEY_UPDATE, KEY_UPDATE_RECORD,
    OVERHEAD, RecordError, Records,
};

/// Runs one fuzz input (see the [module documentation](self)). Panics only when an invariant
/// breaks: that is what the fuzzer looks for.
pub fn run(input: &[u8]) {
    let Some(mut records) = established() else {
        return;
    };
    records.set_tx_limit(3);
    let mut script = Script(input);
    while let Some(op) = script.byte() {
        let outcome = match op % 4 {
            0 => {
                let len = usize::from(script.u16());
                let mut record = script.bytes(len);
                open_raw(&mut records, &mut record)
            }
            1 => {
                let typ = script.byte().unwrap_or(CONTENT_APPLICATION_DATA);
                let len = usize::from(script.u16()) % (17 * 1024);
                let content = script.bytes(len);
                let padding = usize::from(script.byte().unwrap_or(0));
                open_sealed(&mut records, typ, &content, padding)
            }
            2 => {
                let request = script.byte().unwrap_or(0);
                let cut = usize::from(script.byte().unwrap_or(0)) % 5;
                let update = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, request];
                let (first, rest) = update.split_at(cut);
                let mut outcome = Ok(());
                for part in [first, rest] {
                    if !part.is_empty() && outcome.is_ok() {
                        outcome = open_sealed(&mut records, CONTENT_HANDSHAKE, part, 0);
                    }
                }
                outcome
            }
            _ => {
                let len = usize::from(script.byte().unwrap_or(0));
                let plain = script.bytes(len);
                let mut out = vec![0u8; plain.len() + OVERHEAD + KEY_UPDATE_RECORD];
                records.seal_data(&plain, &mut out).map(|_| ())
            }
        };
        if let Err(e) = outcome {
            assert!(
                e.alert().is_some() || matches!(e, RecordError::PeerAlert(_)),
                "a fault without an alert: {e}"
            );
            return;
        }
    }
}

/// Frames and opens `record` as the stream would.
fn open_raw(records: &mut Records, record: &mut [u8]) -> Result<(), RecordError> {
    let Some(len) = Records::record_len(record)? else {
        return Ok(());
    };
    records.open(&mut record[..len]).map(|_| ())
}

/// Seals `content` + inner type + `padding` zeros under the peer's current key, then opens it.
fn open_sealed(
    records: &mut Records,
    typ: u8,
    content: &[u8],
    padding: usize,
) -> Result<(), RecordError> {
    let mut inner = content.to_vec();
    inner.push(typ);
    inner.resize(inner.len() + padding, 0);
    let mut record = vec![0u8; inner.len() + OVERHEAD];
    let mut client = records.peer_keys();
    // The inner type is already in `inner`; the zero `seal` appends as a type is padding.
    let n = client.seal(0, &inner, &mut record)?;
    record.truncate(n);
    let Some(len) = Records::record_len(&record)? else {
        panic!("a whole sealed record reads as incomplete");
    };
    assert_eq!(len, record.len());
    match records.open(&mut record)? {
        Content::Data(plain) if typ == CONTENT_APPLICATION_DATA => {
            assert_eq!(plain, content, "sealed data opened differently");
        }
        _ => {}
    }
    Ok(())
}

/// A fresh server record layer after a real handshake, or `None` if the runtime or the
/// handshake could not be set up (not the fuzzer's concern).
fn established() -> Option<Records> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let (server_config, connector) = configs()?;
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
        let acceptor = super::LeanTlsAcceptor::new(server_config);
        let (server, client) = tokio::join!(acceptor.accept(s), connector.connect(name, c));
        let _client = client.ok()?;
        Some(server.ok()?.records)
    })
}

/// The server configuration and a client trusting it, made once per process.
fn configs() -> Option<(Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector)> {
    static CONFIGS: std::sync::OnceLock<
        Option<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)>,
    > = std::sync::OnceLock::new();
    let (server, client) = CONFIGS
        .get_or_init(|| {
            let (cert_key, roots) = crate::self_signed(&["localhost"]).ok()?;
            let server = crate::server_config(&cert_key, crate::ALPN_RAW).ok()?;
            Some((server, crate::client_config(roots, crate::ALPN_RAW)))
        })
        .as_ref()?;
    Some((
        server.clone(),
        tokio_rustls::TlsConnector::from(client.clone()),
    ))
}

/// The input, read front to back; reads past its end yield nothing.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken.to_vec()
    }
}

#[cfg(test)]
mod tests {
    /// The committed seed corpus of the fuzz target runs clean (CI runs the fuzzer on it too,
    /// when cargo-fuzz can be built: scripts/fuzz).
    #[test]
    fn the_seed_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/records");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("the seed corpus") {
            let input = std::fs::read(entry.expect("a seed").path()).expect("a seed");
            super::run(&input);
            seeds += 1;
        }
        assert!(seeds >= 5, "only {seeds} seeds in {dir}");
    }
}
