//! Fetching `http(s)` image URLs for vision requests, when the operator
//! allows it (`--allow-image-urls`): a server that fetches whatever URL a
//! client names can be made to read its own network, so only public
//! addresses are reached (every address a name resolves to is checked, on
//! every redirect), within a time limit and a size limit.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use futures::future::BoxFuture;

use llmlab_core::config;
use llmlab_core::media::ImageFetcher;

#[derive(Debug)]
pub struct HttpImageFetcher {
    agent: ureq::Agent,
}

impl Default for HttpImageFetcher {
    fn default() -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(config::IMAGE_FETCH_TIMEOUT)
            .redirects(config::IMAGE_FETCH_MAX_REDIRECTS as u32)
            .resolver(PublicAddressesOnly)
            .build();
        Self { agent }
    }
}

impl ImageFetcher for HttpImageFetcher {
    fn fetch<'a>(&'a self, url: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        let agent = self.agent.clone();
        let url = url.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || fetch_blocking(&agent, &url, max_bytes))
                .await
                .map_err(|e| format!("fetching the image failed: {e}"))?
        })
    }
}

fn fetch_blocking(agent: &ureq::Agent, url: &str, max_bytes: u64) -> Result<Vec<u8>, String> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => format!("fetching the image failed: the server answered {code}"),
        ureq::Error::Transport(t) if refused_address(&t) => {
            "image URLs may only name public addresses (this one is loopback, private or link-local)".to_owned()
        }
        ureq::Error::Transport(t) => format!("fetching the image failed: {}", t.kind()),
    })?;
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("fetching the image failed: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "the image at the URL is more than the {max_bytes} bytes allowed"
        ));
    }
    Ok(bytes)
}

/// The resolver below refused every address of the host.
fn refused_address(error: &ureq::Transport) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Resolves a host as the system does, then keeps only public addresses;
/// a name with none is refused.
struct PublicAddressesOnly;

impl ureq::Resolver for PublicAddressesOnly {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let public: Vec<SocketAddr> = netloc.to_socket_addrs()?.filter(|a| is_public(a.ip())).collect();
        if public.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "image URLs may only name public addresses",
            ));
        }
        Ok(public)
    }
}

/// Not loopback, private, link-local, shared (CGNAT), multicast,
/// documentation or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_loopback_url_is_refused_before_connecting() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cat.png", listener.local_addr().unwrap());
        let fetcher = HttpImageFetcher::default();
        let err = fetch_blocking(&fetcher.agent, &url, 1000).unwrap_err();
        assert!(err.contains("public addresses"), "{err}");
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "nothing may have connected");
    }
}
