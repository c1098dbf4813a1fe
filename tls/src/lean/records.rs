//! The TLS 1.3 record layer of an established connection, without I/O.
//!
//! Once rustls has finished the handshake, [`Records::new`] turns its connection into a
//! [`KernelConnection`] — rustls's API for stacks that protect records themselves (kTLS) —
//! keeping only what a key update needs (≈ 0.2 KB on the heap), and takes the traffic keys.
//! From then on this module seals and opens records (RFC 8446 §5): the 5-byte header, the
//! inner content type and padding, AEAD with the per-record nonce (IV ⊕ sequence number),
//! alerts, `close_notify`, and post-handshake `KeyUpdate` (§4.6.3: follow the peer's,
//! answer a requested one, refresh our own key before the suite's confidentiality limit).
//!
//! Why not rustls's own record layer: an unbuffered rustls connection keeps ≈ 2.2 KB on the
//! heap for its life (a 640-byte handshake deframer it never frees, two 560-byte ring key
//! schedules, two queues) and 1.1 KB inline; idle connections are the edge's main memory
//! cost. Here a direction holds its raw key and IV (52 bytes) and ring's key schedule is
//! built on the stack for each record (≈ 0.1–0.2 µs with AES-NI; a write already costs
//! microseconds in the kernel).
//!
//! The cryptography is ring's (`LessSafeKey`); the AAD is rustls's helper
//! ([`make_tls13_aad`]). A direction's key and IV are wiped when it is dropped (a key update
//! or the connection's end): [`Keys`] zeroizes them, and rustls's `AeadKey` it copies the key
//! from zeroizes itself. Not wiped: ring's key schedule, built on the stack for one record
//! (ring has no zeroizing API), and the 12-byte `Iv` rustls hands over (it has no mutable
//! access; the copy is dropped at once). Everything a peer sends is checked and every fault is
//! a [`RecordError`] naming the alert owed to the peer; nothing here panics on input.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use rustls::crypto::cipher::make_tls13_aad;
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Record header: content type, legacy version, length.
pub(super) const HEADER_LEN: usize = 5;
/// The AEAD tag of every TLS 1.3 suite.
const TAG_LEN: usize = 16;
/// Bytes a sealed record adds to its plaintext: header, inner content type, tag.
pub(super) const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// A sealed `KeyUpdate` record (header, 5-byte message, inner type, tag).
pub(super) const KEY_UPDATE_RECORD: usize = OVERHEAD + 5;
/// Largest plaintext of one record.
pub(super) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext of one record (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;

const CONTENT_ALERT: u8 = 21;
pub(super) const CONTENT_HANDSHAKE: u8 = 22;
pub(super) const CONTENT_APPLICATION_DATA: u8 = 23;
pub(super) const HANDSHAKE_KEY_UPDATE: u8 = 24;
/// Handshake message header: type, 24-bit length.
const HANDSHAKE_HEADER_LEN: usize = 4;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;
/// Key updates accepted in a row without application data between them: a peer that only
/// rekeys is flooding, not talking.
const MAX_UPDATES_IN_A_ROW: u8 = 32;

/// A fatal fault of the record layer. [`RecordError::alert`] is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RecordError {
    /// A record did not authenticate (forged, corrupted, or under another key).
    BadRecordMac,
    /// A record longer than TLS allows.
    RecordOverflow,
    /// A record or message that has no place here.
    Unexpected(&'static str),
    /// A malformed message.
    Decode(&'static str),
    /// A well-formed message with a value it may not carry.
    IllegalParameter(&'static str),
    /// The peer sent a fatal alert (its description code).
    PeerAlert(u8),
    /// Something on our side (key schedule, suite) failed.
    Internal(String),
}

impl RecordError {
    /// The alert description owed to the peer, if any (none for the peer's own alert).
    pub(super) fn alert(&self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(ALERT_BAD_RECORD_MAC),
            RecordError::RecordOverflow => Some(ALERT_RECORD_OVERFLOW),
            RecordError::Unexpected(_) => Some(ALERT_UNEXPECTED_MESSAGE),
            RecordError::Decode(_) => Some(ALERT_DECODE_ERROR),
            RecordError::IllegalParameter(_) => Some(ALERT_ILLEGAL_PARAMETER),
            RecordError::PeerAlert(_) => None,
            RecordError::Internal(_) => Some(ALERT_INTERNAL_ERROR),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadRecordMac => {
                f.write_str("TLS record failed authentication (bad_record_mac)")
            }
            RecordError::RecordOverflow => f.write_str("TLS record too large (record_overflow)"),
            RecordError::Unexpected(what) => write!(f, "unexpected TLS message: {what}"),
            RecordError::Decode(what) => write!(f, "malformed TLS message: {what}"),
            RecordError::IllegalParameter(what) => write!(f, "illegal TLS parameter: {what}"),
            RecordError::PeerAlert(code) => write!(f, "peer sent fatal TLS alert {code}"),
            RecordError::Internal(what) => write!(f, "TLS record layer: {what}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// What one opened record carried.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Content<'a> {
    /// Application data (possibly empty).
    Data(&'a [u8]),
    /// Nothing for the reader (a key update was followed; an ignorable alert).
    Nothing,
    /// The peer's `close_notify`: it sends no more.
    CloseNotify,
}

/// Longest AEAD key of the TLS 1.3 suites (AES-256-GCM, ChaCha20-Poly1305).
const MAX_KEY_LEN: usize = 32;

/// One direction's traffic key. Its key and IV are zeroized when it is dropped.
pub(super) struct Keys {
    aead: &'static aead::Algorithm,
    key: [u8; MAX_KEY_LEN],
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Zeroize for Keys {
    fn zeroize(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Keys {}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Keys, RecordError> {
        let (aead, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::Internal("cipher suite not supported".into())),
        };
        let mut keys = Keys {
            aead,
            key: [0; MAX_KEY_LEN],
            iv: [0; NONCE_LEN],
            seq,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != aead.key_len() || key.len() > MAX_KEY_LEN || iv.len() != NONCE_LEN {
            return Err(RecordError::Internal(
                "traffic key of the wrong size".into(),
            ));
        }
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv.copy_from_slice(iv);
        // `secrets` is dropped here: rustls's `AeadKey` zeroizes itself.
        Ok(keys)
    }

    /// ring's key schedule, for this record only.
    fn ring_key(&self) -> Result<LessSafeKey, RecordError> {
        UnboundKey::new(self.aead, &self.key[..self.aead.key_len()])
            .map(LessSafeKey::new)
            .map_err(|_| RecordError::Internal("bad traffic key".into()))
    }

    fn nonce(&mut self) -> Result<aead::Nonce, RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::Internal(
            "record sequence number exhausted".into(),
        ))?;
        // RFC 8446 §5.3: the sequence number, big-endian and left-padded, XORed with the IV.
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        Ok(aead::Nonce::assume_unique_for_key(nonce))
    }

    /// Seals `plain` with inner content type `typ` into the front of `out` (at least
    /// `plain.len() + OVERHEAD` bytes); returns the record's length.
    pub(super) fn seal(
        &mut self,
        typ: u8,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        let inner = plain.len() + 1;
        let total = HEADER_LEN + inner + TAG_LEN;
        let Some(out) = out.get_mut(..total) else {
            return Err(RecordError::Internal("record buffer too small".into()));
        };
        let header = make_tls13_aad(inner + TAG_LEN);
        out[..HEADER_LEN].copy_from_slice(&header);
        out[HEADER_LEN..HEADER_LEN + plain.len()].copy_from_slice(plain);
        out[HEADER_LEN + plain.len()] = typ;
        let key = self.ring_key()?;
        let nonce = self.nonce()?;
        let (body, tag) = out[HEADER_LEN..].split_at_mut(inner);
        let sealed = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), body)
            .map_err(|_| RecordError::Internal("encryption failed".into()))?;
        tag.copy_from_slice(sealed.as_ref());
        Ok(total)
    }

    /// Opens one whole record in place; returns its inner content type and plaintext.
    fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<(u8, &'a [u8]), RecordError> {
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let aad = Aad::from([header[0], header[1], header[2], header[3], header[4]]);
        let key = self.ring_key()?;
        let nonce = self.nonce()?;
        let plain = key
            .open_in_place(nonce, aad, body)
            .map_err(|_| RecordError::BadRecordMac)?;
        // The inner content type is the last non-zero byte; zeros after it are padding.
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::Unexpected("record with no content type"));
        };
        // RFC 8446 §5.4: content, type and padding together at most 2^14 + 1 bytes.
        if end > MAX_PLAINTEXT || plain.len() > MAX_PLAINTEXT + 1 {
            return Err(RecordError::RecordOverflow);
        }
        Ok((plain[end], &plain[..end]))
    }
}

/// The established connection's record protection. See the [module documentation](self).
pub(super) struct Records {
    kernel: KernelConnection<ServerConnectionData>,
    tx: Keys,
    rx: Keys,
    /// Records one key may seal before it is refreshed (the suite's confidentiality limit).
    tx_limit: u64,
    updates_in_a_row: u8,
    /// The peer asked for our key to be updated: one `KeyUpdate` is owed before our next
    /// application data (RFC 8446 §4.6.3; however many requests came, one answer).
    answer_owed: bool,
    /// The start of a handshake message whose record ended before it did (RFC 8446 §5.1
    /// lets a handshake message span records, as long as no other record comes between):
    /// at most its 4-byte header, since the only message accepted, `KeyUpdate`, has a
    /// one-byte body.
    fragment: [u8; HANDSHAKE_HEADER_LEN],
    fragment_len: u8,
}

impl Records {
    /// Takes over from rustls once its handshake is complete and everything it queued has
    /// been encoded (the stream's handshake loop guarantees both).
    pub(super) fn new(conn: UnbufferedServerConnection) -> Result<Records, RecordError> {
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(|e| RecordError::Internal(e.to_string()))?;
        let tx_limit = match kernel.negotiated_cipher_suite() {
            rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            _ => return Err(RecordError::Internal("not a TLS 1.3 connection".into())),
        };
        Ok(Records {
            tx: Keys::new(secrets.tx)?,
            rx: Keys::new(secrets.rx)?,
            kernel,
            tx_limit,
            updates_in_a_row: 0,
            answer_owed: false,
            fragment: [0; HANDSHAKE_HEADER_LEN],
            fragment_len: 0,
        })
    }

    /// The negotiated cipher suite.
    pub(super) fn cipher_suite(&self) -> rustls::SupportedCipherSuite {
        self.kernel.negotiated_cipher_suite()
    }

    /// The length of the record at the front of `data` once all of it is there; `None`
    /// while it is incomplete.
    pub(super) fn record_len(data: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(header) = data.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if header[0] != CONTENT_APPLICATION_DATA {
            return Err(RecordError::Unexpected(
                "unprotected record after the handshake",
            ));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_CIPHERTEXT {
            return Err(RecordError::RecordOverflow);
        }
        if len < TAG_LEN + 1 {
            return Err(RecordError::BadRecordMac);
        }
        Ok((data.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
    }

    /// Opens one whole record (as [`Records::record_len`] delimited it) in place. A
    /// `KeyUpdate` that asks for ours leaves one owed ([`Records::answer_owed`]).
    pub(super) fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<Content<'a>, RecordError> {
        let (typ, plain) = self.rx.open(record)?;
        if self.fragment_len > 0 && typ != CONTENT_HANDSHAKE {
            return Err(RecordError::Unexpected(
                "record interleaved with a fragmented handshake message",
            ));
        }
        match typ {
            CONTENT_APPLICATION_DATA => {
                // Only real data ends a run of key updates (an empty record costs nothing).
                if !plain.is_empty() {
                    self.updates_in_a_row = 0;
                }
                Ok(Content::Data(plain))
            }
            CONTENT_ALERT => match plain {
                [_, ALERT_CLOSE_NOTIFY] => Ok(Content::CloseNotify),
                [_, ALERT_USER_CANCELED] => Ok(Content::Nothing),
                [_, code] => Err(RecordError::PeerAlert(*code)),
                _ => Err(RecordError::Decode("alert of the wrong length")),
            },
            CONTENT_HANDSHAKE => {
                self.handshake(plain)?;
                Ok(Content::Nothing)
            }
            _ => Err(RecordError::Unexpected("record of an unknown content type")),
        }
    }

    /// Takes a handshake record's content: after the handshake the only message a server
    /// accepts is `KeyUpdate`, possibly split over records (none other between them), and
    /// since it changes the key it must end its record (§5.1).
    fn handshake(&mut self, mut plain: &[u8]) -> Result<(), RecordError> {
        if plain.is_empty() {
            return Err(RecordError::Unexpected("empty handshake record"));
        }
        let have = usize::from(self.fragment_len);
        let take = (HANDSHAKE_HEADER_LEN - have).min(plain.len());
        self.fragment[have..have + take].copy_from_slice(&plain[..take]);
        plain = &plain[take..];
        // At most HANDSHAKE_HEADER_LEN: fits.
        self.fragment_len = (have + take) as u8;
        if self.fragment[0] != HANDSHAKE_KEY_UPDATE {
            return Err(RecordError::Unexpected(
                "handshake message after the handshake",
            ));
        }
        if usize::from(self.fragment_len) < HANDSHAKE_HEADER_LEN {
            return Ok(());
        }
        let [_, l0, l1, l2] = self.fragment;
        if [l0, l1, l2] != [0, 0, 1] {
            return Err(RecordError::Decode("KeyUpdate of the wrong length"));
        }
        match *plain {
            [] => Ok(()),
            [request] => {
                self.fragment_len = 0;
                self.key_update(request)
            }
            [_, ..] => Err(RecordError::Unexpected(
                "a KeyUpdate that does not end its record",
            )),
        }
    }

    /// Follows a whole `KeyUpdate` whose `request_update` is `request`.
    fn key_update(&mut self, request: u8) -> Result<(), RecordError> {
        if request > 1 {
            return Err(RecordError::IllegalParameter(
                "KeyUpdate with an unknown request value",
            ));
        }
        self.updates_in_a_row += 1;
        if self.updates_in_a_row > MAX_UPDATES_IN_A_ROW {
            return Err(RecordError::Unexpected("key updates without data"));
        }
        let next = self
            .kernel
            .update_rx_secret()
            .map_err(|e| RecordError::Internal(e.to_string()))?;
        self.rx = Keys::new(next)?;
        self.answer_owed |= request == 1;
        Ok(())
    }

    /// Whether the peer is owed our `KeyUpdate`.
    #[cfg(test)]
    pub(super) fn answer_owed(&self) -> bool {
        self.answer_owed
    }

    /// Seals `KeyUpdate(update_not_requested)` into `out` and moves to the next key; the
    /// next key is derived first, so a failure leaves nothing sealed under a key the peer
    /// would not follow.
    fn seal_key_update(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        let next = self
            .kernel
            .update_tx_secret()
            .map_err(|e| RecordError::Internal(e.to_string()))?;
        let next = Keys::new(next)?;
        let n = self
            .tx
            .seal(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.tx = next;
        self.answer_owed = false;
        Ok(n)
    }

    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) as application data into `out`, which
    /// must hold `plain.len() + OVERHEAD + KEY_UPDATE_RECORD` bytes: an owed `KeyUpdate`, or
    /// a key at its limit, goes first (one record serves both). Returns the bytes written.
    pub(super) fn seal_data(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        let mut n = 0;
        if self.answer_owed || self.tx.seq >= self.tx_limit.saturating_sub(1) {
            n = self.seal_key_update(out)?;
        }
        let rest = out.get_mut(n..).unwrap_or_default();
        Ok(n + self.tx.seal(CONTENT_APPLICATION_DATA, plain, rest)?)
    }

    /// Appends an alert record to `outgoing` (`close_notify` with [`Records::close_notify`]).
    pub(super) fn seal_alert(&mut self, description: u8, outgoing: &mut Vec<u8>) {
        let level = if description == ALERT_CLOSE_NOTIFY {
            1
        } else {
            2
        };
        // On failure nothing can be said any more; the socket closes all the same.
        let _ = append(outgoing, OVERHEAD + 2, |out| {
            self.tx.seal(CONTENT_ALERT, &[level, description], out)
        });
    }

    /// Appends `close_notify` to `outgoing`.
    pub(super) fn close_notify(&mut self, outgoing: &mut Vec<u8>) {
        self.seal_alert(ALERT_CLOSE_NOTIFY, outgoing);
    }

    /// Records sealed under the current transmit key (for tests).
    #[cfg(test)]
    pub(super) fn tx_seq(&self) -> u64 {
        self.tx.seq
    }

    /// Lowers the confidentiality limit (for tests of the refresh).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    /// A copy of the peer's current transmit key (= our receive key, at its sequence
    /// number): for the fuzz harness, to seal records as the peer would.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn peer_keys(&self) -> Keys {
        Keys {
            aead: self.rx.aead,
            key: self.rx.key,
            iv: self.rx.iv,
            seq: self.rx.seq,
        }
    }
}

/// Appends to `outgoing` what `write` puts into `room` bytes of new space at its end (and
/// returns the length of); nothing is appended when `write` fails.
pub(super) fn append<E>(
    outgoing: &mut Vec<u8>,
    room: usize,
    write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = outgoing.len();
    outgoing.resize(start + room, 0);
    match write(&mut outgoing[start..]) {
        Ok(n) => {
            outgoing.truncate(start + n.min(room));
            Ok(())
        }
        Err(e) => {
            outgoing.truncate(start);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The record layer against records a client sealed with its real traffic key (taken
    //! from a rustls client after a real handshake with [`super::super::LeanTlsAcceptor`]).

    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::*;

    /// The server's record layer, and the client's transmit key to seal records for it.
    fn established() -> (Records, Keys) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (cert_key, roots) = crate::self_signed(&["localhost"]).expect("certificate");
            let server_config = crate::server_config(&cert_key, crate::ALPN_RAW).expect("config");
            let mut client_config = (*crate::client_config(roots, crate::ALPN_RAW)).clone();
            client_config.enable_secret_extraction = true;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
            let (c, s) = tokio::io::duplex(64 * 1024);
            let acceptor = super::super::LeanTlsAcceptor::new(server_config);
            let name = ServerName::try_from("localhost").expect("name");
            let (server, client) = tokio::join!(acceptor.accept(s), connector.connect(name, c));
            let server = server.expect("server handshake");
            let (_, client) = client.expect("client handshake").into_inner();
            #[allow(deprecated)]
            let secrets = client.dangerous_extract_secrets().expect("client secrets");
            (server.records, Keys::new(secrets.tx).expect("client key"))
        })
    }

    fn sealed(client: &mut Keys, typ: u8, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; inner.len() + OVERHEAD];
        let n = client.seal(typ, inner, &mut out).expect("seal");
        out.truncate(n);
        out
    }

    fn open(server: &mut Records, record: &mut [u8]) -> Result<Vec<u8>, RecordError> {
        let len = Records::record_len(record)?.expect("a whole record");
        assert_eq!(len, record.len());
        let content = server.open(record)?;
        assert!(!server.answer_owed(), "nothing owed to the peer");
        Ok(match content {
            Content::Data(d) => d.to_vec(),
            Content::Nothing => b"<nothing>".to_vec(),
            Content::CloseNotify => b"<close_notify>".to_vec(),
        })
    }

    #[test]
    fn data_padding_and_ignorable_alerts() {
        let (mut server, mut client) = established();
        let mut r = sealed(&mut client, CONTENT_APPLICATION_DATA, b"hello");
        assert_eq!(open(&mut server, &mut r).unwrap(), b"hello");
        // Padding (zeros after the inner content type) is stripped; empty data is data.
        let mut r = sealed(
            &mut client,
            0,
            &[b'h', b'i', CONTENT_APPLICATION_DATA, 0, 0, 0][..5],
        );
        assert_eq!(open(&mut server, &mut r).unwrap(), b"hi");
        let mut r = sealed(&mut client, CONTENT_APPLICATION_DATA, b"");
        assert_eq!(open(&mut server, &mut r).unwrap(), b"");
        let mut r = sealed(&mut client, CONTENT_ALERT, &[1, ALERT_USER_CANCELED]);
        assert_eq!(open(&mut server, &mut r).unwrap(), b"<nothing>");
        let mut r = sealed(&mut client, CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY]);
        assert_eq!(open(&mut server, &mut r).unwrap(), b"<close_notify>");
    }

    #[test]
    fn every_fault_names_its_alert() {
        let (mut server, mut client) = established();
        let cases: &[(u8, &[u8], RecordError)] = &[
            (
                24,
                b"x",
                RecordError::Unexpected("record of an unknown content type"),
            ),
            (
                0,
                &[0, 0, 0],
                RecordError::Unexpected("record with no content type"),
            ),
            (
                CONTENT_HANDSHAKE,
                &[4, 0, 0, 0],
                RecordError::Unexpected("handshake message after the handshake"),
            ),
            (
                CONTENT_HANDSHAKE,
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 2, 0, 0],
                RecordError::Decode("KeyUpdate of the wrong length"),
            ),
            (
                CONTENT_HANDSHAKE,
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 7],
                RecordError::IllegalParameter("KeyUpdate with an unknown request value"),
            ),
            (
                CONTENT_HANDSHAKE,
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 0],
                RecordError::Decode("KeyUpdate of the wrong length"),
            ),
            (
                CONTENT_HANDSHAKE,
                &[
                    HANDSHAKE_KEY_UPDATE,
                    0,
                    0,
                    1,
                    0,
                    HANDSHAKE_KEY_UPDATE,
                    0,
                    0,
                    1,
                    0,
                ],
                RecordError::Unexpected("a KeyUpdate that does not end its record"),
            ),
            (
                CONTENT_HANDSHAKE,
                &[],
                RecordError::Unexpected("empty handshake record"),
            ),
            (
                CONTENT_ALERT,
                &[2],
                RecordError::Decode("alert of the wrong length"),
            ),
            (CONTENT_ALERT, &[2, 40], RecordError::PeerAlert(40)),
        ];
        for (typ, inner, want) in cases {
            let mut r = sealed(&mut client, *typ, inner);
            assert_eq!(open(&mut server, &mut r).unwrap_err(), *want);
            // Every fault is fatal; only this test goes on, so it forgets a partial message.
            server.fragment_len = 0;
        }
        assert_eq!(
            RecordError::PeerAlert(40).alert(),
            None,
            "no alert answers an alert"
        );
        assert_eq!(RecordError::Decode("x").alert(), Some(ALERT_DECODE_ERROR));
        assert_eq!(
            RecordError::IllegalParameter("x").alert(),
            Some(ALERT_ILLEGAL_PARAMETER),
            "RFC 8446 §4.6.3: an unknown request_update is illegal_parameter"
        );

        // A flipped bit, and a record under a key the server does not have.
        let mut r = sealed(&mut client, CONTENT_APPLICATION_DATA, b"genuine");
        r[HEADER_LEN + 2] ^= 1;
        assert_eq!(
            open(&mut server, &mut r).unwrap_err(),
            RecordError::BadRecordMac
        );
    }

    #[test]
    fn framing_is_checked_before_decryption() {
        assert_eq!(
            Records::record_len(&[23, 3, 3]),
            Ok(None),
            "header incomplete"
        );
        assert_eq!(
            Records::record_len(&[23, 3, 3, 0, 20, 1]),
            Ok(None),
            "body incomplete"
        );
        assert_eq!(
            Records::record_len(&[22, 3, 3, 0, 20]),
            Err(RecordError::Unexpected(
                "unprotected record after the handshake"
            ))
        );
        let over = (MAX_CIPHERTEXT + 1) as u16;
        assert_eq!(
            Records::record_len(&[23, 3, 3, (over >> 8) as u8, over as u8]),
            Err(RecordError::RecordOverflow)
        );
        assert_eq!(
            Records::record_len(&[23, 3, 3, 0, 16]),
            Err(RecordError::BadRecordMac),
            "shorter than a tag and a content type"
        );
    }

    #[test]
    fn plaintext_over_16_kib_is_an_overflow() {
        let (mut server, mut client) = established();
        let mut r = sealed(
            &mut client,
            CONTENT_APPLICATION_DATA,
            &vec![7u8; MAX_PLAINTEXT + 1],
        );
        assert_eq!(
            open(&mut server, &mut r).unwrap_err(),
            RecordError::RecordOverflow
        );
    }

    /// A direction's key and IV are wiped when it is dropped (a key update replaces it, or
    /// the connection ends): `Drop` runs `zeroize`, checked here on a live key.
    #[test]
    fn traffic_keys_are_zeroized_when_dropped() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>(_: &T) {}
        let (server, mut client) = established();
        zeroized_on_drop(&client);
        assert!(client.key.iter().any(|&b| b != 0) && client.iv.iter().any(|&b| b != 0));
        client.zeroize();
        assert_eq!(client.key, [0; MAX_KEY_LEN]);
        assert_eq!(client.iv, [0; NONCE_LEN]);
        zeroized_on_drop(&server.rx);
        zeroized_on_drop(&server.tx);
    }

    /// A `KeyUpdate` split over records at every possible point is followed (RFC 8446 §5.1:
    /// handshake messages may span records; rustls accepts that too).
    #[test]
    fn a_fragmented_key_update_is_followed() {
        let update = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 1];
        for cut in 1..update.len() {
            let (mut server, mut client) = established();
            let mut first = sealed(&mut client, CONTENT_HANDSHAKE, &update[..cut]);
            assert_eq!(
                open(&mut server, &mut first).unwrap(),
                b"<nothing>",
                "cut {cut}"
            );
            let mut rest = sealed(&mut client, CONTENT_HANDSHAKE, &update[cut..]);
            let len = Records::record_len(&rest).unwrap().unwrap();
            assert_eq!(
                server.open(&mut rest[..len]),
                Ok(Content::Nothing),
                "cut {cut}"
            );
            assert!(
                server.answer_owed(),
                "the requested update is owed (cut {cut})"
            );
            // The server follows the new key: the old one no longer opens records.
            let mut stale = sealed(&mut client, CONTENT_APPLICATION_DATA, b"old key");
            assert_eq!(
                open(&mut server, &mut stale).unwrap_err(),
                RecordError::BadRecordMac,
                "cut {cut}"
            );
        }
    }

    /// In three pieces too; but nothing may come between the pieces (§5.1).
    #[test]
    fn a_fragmented_key_update_admits_no_other_record_between() {
        let (mut server, mut client) = established();
        for piece in [&[HANDSHAKE_KEY_UPDATE][..], &[0, 0]] {
            let mut r = sealed(&mut client, CONTENT_HANDSHAKE, piece);
            assert_eq!(open(&mut server, &mut r).unwrap(), b"<nothing>");
        }
        let mut r = sealed(&mut client, CONTENT_APPLICATION_DATA, b"");
        assert_eq!(
            open(&mut server, &mut r).unwrap_err(),
            RecordError::Unexpected("record interleaved with a fragmented handshake message")
        );
    }

    #[test]
    fn key_updates_in_a_row_are_bounded() {
        let (mut server, _client) = established();
        // Not sealed by the client: only the counter is under test here.
        server.updates_in_a_row = MAX_UPDATES_IN_A_ROW;
        assert_eq!(
            server.key_update(0),
            Err(RecordError::Unexpected("key updates without data"))
        );
    }

    #[test]
    fn our_key_is_refreshed_before_its_limit() {
        let (mut server, _client) = established();
        server.set_tx_limit(3);
        let mut out = [0u8; 64 + OVERHEAD + KEY_UPDATE_RECORD];
        let mut lengths = Vec::new();
        for _ in 0..6 {
            lengths.push(server.seal_data(b"0123456789", &mut out).unwrap());
            assert!(server.tx_seq() < 3);
        }
        let data = 10 + OVERHEAD;
        assert!(
            lengths.contains(&(data + KEY_UPDATE_RECORD)),
            "a KeyUpdate went first"
        );
        assert!(lengths.contains(&data));
    }
}
