//! Answers pylon writes itself: not found, unavailable, redirects, limits.

use bytes::Bytes;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Writes a short `text/plain` answer, with a final newline. `location` is set for redirects.
pub(super) async fn text(
    session: &mut Session,
    status: u16,
    body: &str,
    location: Option<&str>,
) -> Result<()> {
    exact(session, status, format!("{body}\n"), location).await
}

/// Writes `body` as `text/plain`, byte for byte.
pub(super) async fn exact(
    session: &mut Session,
    status: u16,
    body: String,
    location: Option<&str>,
) -> Result<()> {
    let body = Bytes::from(body);
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(location) = location {
        header.insert_header(http::header::LOCATION, location)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(header), head_only).await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
