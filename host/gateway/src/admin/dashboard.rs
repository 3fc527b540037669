//! The dashboard: static files embedded in the binary (no CDN, nothing fetched from
//! elsewhere), served at the admin listener's `/`. The page holds the token in the tab's
//! session storage and calls the same `/api` routes as the CLI, so it can do nothing the
//! token could not; these files hold no data and need no token. The signature checker runs
//! the web package (wasm-bindgen) in the page: the secret never leaves it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use crate::http::Reply;

/// The web package's files, copied in by `build.rs` when `web/build.sh` has built them
/// (empty otherwise: the checker then says how to get it).
const VERIFY_INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web-pkg/index.js"));
const VERIFY_GLUE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web-pkg/payflow_verify_web.js"));
const VERIFY_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web-pkg/payflow_verify_web_bg.wasm"));

/// Only this origin's scripts, styles and API; wasm compiled in the page; never framed.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
                   base-uri 'none'";

/// The file at `path`, if it is one of the dashboard's.
pub fn asset(path: &str) -> Option<Reply> {
    let (body, content_type): (&'static [u8], &'static str) = match path {
        "/" | "/index.html" => (include_bytes!("dashboard/index.html"), "text/html; charset=utf-8"),
        "/assets/app.js" => (include_bytes!("dashboard/app.js"), "text/javascript; charset=utf-8"),
        "/assets/app.css" => (include_bytes!("dashboard/app.css"), "text/css; charset=utf-8"),
        "/assets/payflow-verify/index.js" if !VERIFY_INDEX.is_empty() => {
            (VERIFY_INDEX, "text/javascript; charset=utf-8")
        }
        "/assets/payflow-verify/payflow_verify_web.js" if !VERIFY_GLUE.is_empty() => {
            (VERIFY_GLUE, "text/javascript; charset=utf-8")
        }
        "/assets/payflow-verify/payflow_verify_web_bg.wasm" if !VERIFY_WASM.is_empty() => {
            (VERIFY_WASM, "application/wasm")
        }
        "/openapi.json" => (include_bytes!("openapi.json"), "application/json"),
        _ => return None,
    };
    let mut reply = Response::new(Full::new(Bytes::from_static(body)));
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // The files change only with the binary; a restart with a new one must not serve old JS.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(reply)
}

/// Whether this build embeds the web package (the signature checker).
pub fn has_checker() -> bool {
    !VERIFY_WASM.is_empty()
}
