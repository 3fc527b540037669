//! Traces over OTLP: a real gateway process with `[telemetry] otlp_endpoint` pointing at a small
//! OTLP/HTTP receiver in this test, which decodes the protobuf it is sent with its own reader
//! (not the exporter's library). An event's spans arrive with the right parent/child structure
//! (receive → verify, store; receive → plugin step → each plugin; receive → each delivery
//! attempt), and the upstream gets a W3C `traceparent` naming its attempt's span.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::{client, guests, send_event, wait_for_status, Gateway, Upstream, SECRET};
use tokio::net::TcpListener;

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: u64,
    attributes: HashMap<String, String>,
}

/// The protobuf wire format, as far as OTLP traces need: each field of a message as (number,
/// value), a value being a varint, 8 or 4 fixed bytes, or a length-delimited slice.
enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn fields(mut buf: &[u8]) -> Vec<(u64, Value<'_>)> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = buf[0];
            *buf = &buf[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let value = match key & 7 {
            0 => Value::Int(varint(&mut buf)),
            1 => {
                let v = u64::from_le_bytes(buf[..8].try_into().unwrap());
                buf = &buf[8..];
                Value::Int(v)
            }
            2 => {
                let len = varint(&mut buf) as usize;
                let (v, rest) = buf.split_at(len);
                buf = rest;
                Value::Bytes(v)
            }
            5 => {
                let v = u32::from_le_bytes(buf[..4].try_into().unwrap());
                buf = &buf[4..];
                Value::Int(u64::from(v))
            }
            other => panic!("wire type {other}"),
        };
        out.push((key >> 3, value));
    }
    out
}

fn messages(buf: &[u8], number: u64) -> Vec<&[u8]> {
    fields(buf)
        .into_iter()
        .filter_map(|(n, v)| match v {
            Value::Bytes(b) if n == number => Some(b),
            _ => None,
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// ExportTraceServiceRequest { resource_spans = 1 { scope_spans = 2 { spans = 2 } } }.
fn decode(request: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource in messages(request, 1) {
        for scope in messages(resource, 2) {
            for span in messages(scope, 2) {
                let mut s = Span {
                    trace_id: String::new(),
                    span_id: String::new(),
                    parent: String::new(),
                    name: String::new(),
                    kind: 0,
                    attributes: HashMap::new(),
                };
                for (n, v) in fields(span) {
                    match (n, v) {
                        (1, Value::Bytes(b)) => s.trace_id = hex(b),
                        (2, Value::Bytes(b)) => s.span_id = hex(b),
                        (4, Value::Bytes(b)) => s.parent = hex(b),
                        (5, Value::Bytes(b)) => s.name = String::from_utf8(b.to_vec()).unwrap(),
                        (6, Value::Int(k)) => s.kind = k,
                        // KeyValue { key = 1, value = 2: AnyValue { string = 1 | bool = 2 | int = 3 } }
                        (9, Value::Bytes(kv)) => {
                            let (mut key, mut value) = (String::new(), String::new());
                            for (n, v) in fields(kv) {
                                match (n, v) {
                                    (1, Value::Bytes(k)) => key = String::from_utf8(k.to_vec()).unwrap(),
                                    (2, Value::Bytes(any)) => {
                                        for (n, v) in fields(any) {
                                            value = match (n, v) {
                                                (1, Value::Bytes(t)) => {
                                                    String::from_utf8(t.to_vec()).unwrap()
                                                }
                                                (_, Value::Int(i)) => i.to_string(),
                                                _ => value,
                                            };
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            s.attributes.insert(key, value);
                        }
                        _ => {}
                    }
                }
                spans.push(s);
            }
        }
    }
    spans
}

/// An OTLP/HTTP receiver: every span POSTed to /v1/traces.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let seen = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let ok = request.uri().path() == "/v1/traces"
                            && request
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v == "application/x-protobuf");
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        if ok {
                            seen.lock().unwrap().extend(decode(&body));
                        }
                        let mut reply = Response::new(Full::new(Bytes::new()));
                        *reply.status_mut() =
                            if ok { hyper::StatusCode::OK } else { hyper::StatusCode::NOT_FOUND };
                        Ok::<_, Infallible>(reply)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, spans)
}

async fn wait_for_spans(spans: &Mutex<Vec<Span>>, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = spans.lock().unwrap().clone();
        if pred(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never received {what}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_spans_reach_the_collector_as_one_tree_and_the_upstream_gets_its_traceparent() {
    let (collector, spans) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    legacy.script(&[(503, &[])]); // the first attempt fails: two attempt spans
    let wasm = |f: &str| guests().join(format!("{f}.wasm")).display().to_string();
    let config = support::config_head(&dir.path().join("db.sqlite"))
        + &format!(
            "[telemetry]\notlp_endpoint = {collector:?}\nservice_name = \"edge-under-test\"\n\
             [[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\nplugins = [\"first\", \"second\"]\nupstream = \"legacy\"\n\
             [[upstream]]\nname = \"legacy\"\nurl = {:?}\nretry_base_ms = 50\n\
             [[plugin]]\nname = \"first\"\npath = {:?}\n[[plugin]]\nname = \"second\"\npath = {:?}\n",
            legacy.url(),
            wasm("noop"),
            wasm("amount_threshold"),
        );
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    assert_eq!(send_event(&client, &gateway.url("/wh"), "evt_traced").await.0, 200);
    wait_for_status(&client, &gateway, "evt_traced", "delivered", Duration::from_secs(30)).await;
    // A refused request is traced too, in a trace of its own.
    let (refused, _) = support::post(&client, &gateway.url("/wh"), &[], b"{}".to_vec()).await;
    assert_eq!(refused, 401);

    let all = wait_for_spans(&spans, "the event's spans", |s| {
        s.iter().filter(|s| s.name == "deliver legacy").count() == 2
            && s.iter().filter(|s| s.name == "receive").count() == 2
    })
    .await;
    let receive = all
        .iter()
        .find(|s| {
            s.name == "receive"
                && s.attributes.get("payflow.event_id").map(String::as_str) == Some("evt_traced")
        })
        .expect("the event's receive span");
    assert_eq!(receive.parent, "", "receive is the root");
    assert_eq!(receive.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(receive.attributes["payflow.outcome"], "received");
    assert_eq!(receive.attributes["http.route"], "/wh");
    let trace: Vec<&Span> = all.iter().filter(|s| s.trace_id == receive.trace_id).collect();
    let children_of = |parent: &Span, name: &str| -> Vec<&Span> {
        trace.iter().copied().filter(|s| s.parent == parent.span_id && s.name == name).collect()
    };
    assert_eq!(children_of(receive, "verify").len(), 1, "{trace:#?}");
    assert_eq!(children_of(receive, "store").len(), 1, "{trace:#?}");
    let step = children_of(receive, "plugin step");
    assert_eq!(step.len(), 1, "{trace:#?}");
    let first = children_of(step[0], "plugin first");
    let second = children_of(step[0], "plugin second");
    assert_eq!((first.len(), second.len()), (1, 1), "{trace:#?}");
    assert_eq!(first[0].attributes["payflow.plugin.outcome"], "continue");
    let attempts = children_of(receive, "deliver legacy");
    assert_eq!(attempts.len(), 2, "{trace:#?}");
    assert!(attempts.iter().all(|a| a.kind == 3), "SPAN_KIND_CLIENT");
    let mut statuses: Vec<&str> =
        attempts.iter().map(|a| a.attributes["http.response.status_code"].as_str()).collect();
    statuses.sort();
    assert_eq!(statuses, ["200", "503"]);
    assert_eq!(trace.len(), 8, "receive, verify, store, the step, two plugins, two attempts: {trace:#?}");

    // Each request to the upstream named its own attempt's span in the event's trace.
    let sent: Vec<String> =
        legacy.received().iter().map(|r| r.header("traceparent").expect("traceparent").to_string()).collect();
    assert_eq!(sent.len(), 2);
    let mut named: Vec<&str> = Vec::new();
    for header in &sent {
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!((parts[0], parts[1], parts[3]), ("00", receive.trace_id.as_str(), "01"), "{header}");
        assert!(attempts.iter().any(|a| a.span_id == parts[2]), "{header} names no attempt span");
        named.push(parts[2]);
    }
    assert_ne!(named[0], named[1], "each attempt is a span of its own");
    let refused_receive =
        all.iter().find(|s| s.name == "receive" && s.attributes["payflow.outcome"] == "signature_refused");
    let refused_receive = refused_receive.expect("the refused request's span");
    assert_ne!(refused_receive.trace_id, receive.trace_id);
    let refused_verify = all.iter().find(|s| s.parent == refused_receive.span_id).expect("its verify span");
    assert_eq!(refused_verify.name, "verify");
}
