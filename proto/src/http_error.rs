//! The JSON error envelope every Roam HTTP endpoint answers with (docs/contract.md §5): a
//! status, `content-type: application/json`, the body `{"error": {"code": "...", "message":
//! "..."}}`, and `retry-after` when the caller should come back. The client port (edge), the
//! business API (core, the ID service) and the admin listener build their errors here, so the
//! shape is written once.

use http::{HeaderValue, Response, StatusCode, header};

/// The body `{"error": {"code": code, "message": message}}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

/// An error response: `status`, the JSON body of [`error_body`], and `retry-after` (seconds)
/// when given.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_secs: Option<u32>,
) -> Response<String> {
    let mut response = Response::new(error_body(code, message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after_secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_its_shape_and_escapes_the_message() {
        let r = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "a \"quoted\" edge",
            Some(1),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let body: serde_json::Value = serde_json::from_str(r.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "busy", "message": "a \"quoted\" edge"}})
        );
        let r = error_response(StatusCode::BAD_REQUEST, "invalid_argument", "x", None);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
