//! The credential of the internal gRPC port (edge link, ID service): a shared key every
//! caller sends as `authorization: Bearer <hex>` metadata and the server checks in one
//! interceptor ([`InternalKey::check`]) before any service sees the call.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Request, Status};

/// The metadata key the credential travels in.
pub const METADATA_KEY: &str = "authorization";

/// The shared key of the internal port. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct InternalKey {
    /// `Bearer <hex>`, ready to send.
    header: AsciiMetadataValue,
}

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalKey(..)")
    }
}

impl InternalKey {
    /// The key from its raw bytes.
    pub fn from_bytes(key: &[u8]) -> Self {
        let mut header = AsciiMetadataValue::try_from(format!("Bearer {}", hex(key)))
            .unwrap_or_else(|_| AsciiMetadataValue::from_static("Bearer"));
        header.set_sensitive(true);
        InternalKey { header }
    }

    /// Adds the credential to an outgoing call.
    pub fn attach<T>(&self, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert(METADATA_KEY, self.header.clone());
    }

    /// Checks an incoming call's credential: `UNAUTHENTICATED` when it is missing or wrong
    /// (compared in constant time).
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        use subtle::ConstantTimeEq;
        let Some(got) = metadata.get(METADATA_KEY) else {
            return Err(Status::unauthenticated(
                "the internal port needs its key: `authorization: Bearer <internal key>` (see internal.key_file)",
            ));
        };
        if bool::from(got.as_bytes().ct_eq(self.header.as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong internal key: every process must use the same internal.key_file",
            ))
        }
    }
}

/// A tonic client interceptor that attaches the key to every call (`None`: nothing).
#[derive(Debug, Clone, Default)]
pub struct AttachKey(pub Option<InternalKey>);

impl tonic::service::Interceptor for AttachKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.0 {
            key.attach(&mut request);
        }
        Ok(request)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_key_passes() {
        let key = InternalKey::from_bytes(&[7; 32]);
        let mut ok = Request::new(());
        key.attach(&mut ok);
        assert!(key.check(ok.metadata()).is_ok());
        assert_eq!(
            key.check(Request::new(()).metadata()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut wrong = Request::new(());
        InternalKey::from_bytes(&[8; 32]).attach(&mut wrong);
        assert_eq!(
            key.check(wrong.metadata()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(format!("{key:?}"), "InternalKey(..)");
    }
}
