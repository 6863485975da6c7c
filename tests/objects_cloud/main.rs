//! `EncryptedStore` over `object_store`'s cloud clients against servers on 127.0.0.1: moto's
//! S3 and Azurite's Blob service, each through `object_store`'s integration suite and cmek's
//! object suite. (`object_store`'s GCS client speaks the XML API, which gcp-storage-emulator
//! does not serve: see BENCHMARKS.md and the issue notes.) `scripts/test.sh` starts the servers; a test
//! whose server is not configured is skipped, unless `CMEK_REQUIRE_EMULATORS` is set.

#[path = "../common/mod.rs"]
mod common;
#[path = "../objects/suites.rs"]
mod suites;

mod azurite;
mod s3;

/// The URL in `var`, or `None` (the test is skipped) when it is unset and emulators are not
/// required.
pub(crate) fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("{var} is not set, and CMEK_REQUIRE_EMULATORS is")
        }
        Err(_) => {
            eprintln!("skipped: {var} is not set (scripts/test.sh starts the server)");
            None
        }
    }
}

/// Sends one HTTP/1.1 request to `url`'s host and returns the status code.
pub(crate) fn http(method: &str, url: &str, headers: &[(&str, String)]) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer}"))
}
