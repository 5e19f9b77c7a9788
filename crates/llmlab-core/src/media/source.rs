//! Where an image part's bytes come from: a `data:` URL carries them; an
//! `http(s)` URL names them, and is fetched only when the operator allowed
//! it (the server's [`ImageFetcher`]) before the request is resolved.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use futures_core::future::BoxFuture;

/// What an image URL says, before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource<'a> {
    /// `data:image/...;base64,<payload>`: the bytes are in the URL.
    Data { base64: &'a str },
    /// `http://` or `https://`: the bytes must be fetched.
    Remote(&'a str),
}

/// Read an image URL's scheme and shape. The error says what is wrong in
/// words a client can act on.
pub fn parse_image_url(url: &str) -> Result<ImageSource<'_>, String> {
    let scheme_end = url.find(':').unwrap_or(0);
    let scheme = url[..scheme_end].to_ascii_lowercase();
    match scheme.as_str() {
        "data" => {
            let rest = &url[scheme_end + 1..];
            let Some((header, payload)) = rest.split_once(',') else {
                return Err("a data URL needs a ',' before its payload".into());
            };
            let mut fields = header.split(';');
            let media_type = fields.next().unwrap_or("").trim().to_ascii_lowercase();
            if !(media_type.is_empty() || media_type.starts_with("image/") || media_type == "application/octet-stream")
            {
                return Err(format!(
                    "a data URL for an image must have an image/* type, not '{media_type}'"
                ));
            }
            if !fields.any(|f| f.trim().eq_ignore_ascii_case("base64")) {
                return Err("a data URL for an image must be base64-encoded (data:image/png;base64,...)".into());
            }
            Ok(ImageSource::Data { base64: payload })
        }
        "http" | "https" => Ok(ImageSource::Remote(url)),
        _ => Err("an image URL must be a data: URL (data:image/png;base64,...) or an http(s) URL".into()),
    }
}

impl ImageSource<'_> {
    /// The encoded image bytes: decoded from the URL, or taken from what
    /// was fetched. `max_bytes` bounds the result.
    pub fn bytes(&self, fetched: &RemoteImages, max_bytes: u64) -> Result<Arc<Vec<u8>>, String> {
        match self {
            Self::Data { base64 } => {
                // Base64 is 4 characters per 3 bytes; refuse before decoding.
                let decoded_len = (base64.len() as u64 / 4) * 3;
                if decoded_len > max_bytes + 3 {
                    return Err(too_large(decoded_len, max_bytes));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(base64.trim().as_bytes())
                    .map_err(|e| format!("the data URL's base64 does not decode: {e}"))?;
                if bytes.len() as u64 > max_bytes {
                    return Err(too_large(bytes.len() as u64, max_bytes));
                }
                Ok(Arc::new(bytes))
            }
            Self::Remote(url) => fetched.get(url).cloned().ok_or_else(|| {
                "this server does not fetch image URLs (it would need --allow-image-urls); \
                 send the image inline as a data: URL"
                    .to_owned()
            }),
        }
    }
}

fn too_large(bytes: u64, max: u64) -> String {
    format!("the image is {bytes} bytes, more than the {max} allowed")
}

/// Bytes fetched for a request's `http(s)` image URLs, by URL.
#[derive(Debug, Clone, Default)]
pub struct RemoteImages {
    by_url: HashMap<String, Arc<Vec<u8>>>,
}

impl RemoteImages {
    pub fn insert(&mut self, url: String, bytes: Vec<u8>) {
        self.by_url.insert(url, Arc::new(bytes));
    }

    pub fn get(&self, url: &str) -> Option<&Arc<Vec<u8>>> {
        self.by_url.get(url)
    }

    pub fn is_empty(&self) -> bool {
        self.by_url.is_empty()
    }
}

/// Fetches an image URL for the service. The server provides one only when
/// the operator allows fetching; it refuses private and loopback addresses
/// and answers at most `max_bytes`. The error is shown to the client.
pub trait ImageFetcher: Send + Sync + std::fmt::Debug {
    fn fetch<'a>(&'a self, url: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_read_and_other_schemes_refused() {
        assert_eq!(
            parse_image_url("data:image/png;base64,AAAA"),
            Ok(ImageSource::Data { base64: "AAAA" })
        );
        assert_eq!(
            parse_image_url("HTTPS://example.com/a.png"),
            Ok(ImageSource::Remote("HTTPS://example.com/a.png"))
        );
        assert!(parse_image_url("data:text/plain;base64,AAAA")
            .unwrap_err()
            .contains("image/*"));
        assert!(parse_image_url("data:image/png,rawbytes")
            .unwrap_err()
            .contains("base64"));
        assert!(parse_image_url("file:///etc/passwd").unwrap_err().contains("data: URL"));
        assert!(parse_image_url("no scheme").is_err());
    }

    #[test]
    fn base64_is_checked_and_bounded() {
        let fetched = RemoteImages::default();
        let ok = ImageSource::Data { base64: "AQID" };
        assert_eq!(*ok.bytes(&fetched, 3).unwrap(), vec![1, 2, 3]);
        assert!(ok.bytes(&fetched, 2).unwrap_err().contains("more than the 2 allowed"));
        let bad = ImageSource::Data { base64: "A$==" };
        assert!(bad.bytes(&fetched, 100).unwrap_err().contains("base64"));
        let remote = ImageSource::Remote("http://x/y.png");
        assert!(remote.bytes(&fetched, 100).unwrap_err().contains("--allow-image-urls"));
    }
}
