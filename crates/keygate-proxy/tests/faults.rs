//! Faults and overload on the request path: a hung upstream gets 504 within
//! its timeout, a stalled body is cut (the upstream's) or answered 408 (the
//! client's), and past `max-concurrent-requests` keygate sheds load with
//! 503 and `Retry-After` at once instead of queueing.
//!
//! A test binary of its own, apart from `tests/gateway`: these tests make
//! upstream errors on purpose, and the metrics recorder is one per process,
//! so in the gateway binary they would show up in the counters that its
//! hygiene tests expect to stay still.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that accepts connections, reads what it is sent, and then
/// does `then` with each connection; counts the connections.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`RawUpstream`] does after reading a request's headers.
#[derive(Clone, Copy)]
enum Then {
    /// Never answers (a hung upstream).
    Hang,
    /// Sends headers for 100 bytes, 10 of them, and then nothing.
    StallBody,
}

impl RawUpstream {
    async fn start(then: Then) -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if let Then::StallBody = then {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                                  content-length: 100\r\n\r\n0123456789",
                            )
                            .await;
                    }
                    // Hold the connection open, saying nothing more.
                    let _ = stream.read_to_end(&mut Vec::new()).await;
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// keygate in front of `upstream`, every route white-listed (no provider
/// needed: its discovery URL points nowhere), with `extra` config.
async fn keygate_in_front_of(upstream: &str, extra: &str) -> Keygate {
    let nowhere = format!("http://127.0.0.1:{}/realms/none", free_port());
    Keygate::start_yaml(&base_config(
        &nowhere,
        upstream,
        &format!(
            "listen-admin: 127.0.0.1:0\n\
             resources:\n  - uri: /*\n    white-listed: true\n\
             {extra}"
        ),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_upstream_gets_504_within_the_response_header_timeout() {
    let upstream = RawUpstream::start(Then::Hang).await;
    let keygate = keygate_in_front_of(
        &upstream.url(),
        "upstream-response-header-timeout: 500ms\nupstream-timeout: 200ms\n",
    )
    .await;
    let http = client();
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (http, url) = (http.clone(), keygate.url(&format!("/hung/{i}")));
            tokio::spawn(async move {
                let resp = http.get(url).send().await.unwrap();
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.unwrap();
                (
                    status,
                    body["error"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect();
    for call in calls {
        let (status, error) = call.await.unwrap();
        assert_eq!((status, error.as_str()), (504, "gateway_timeout"));
    }
    let took = started.elapsed();
    eprintln!("20 requests to a hung upstream: all 504 after {took:?}");
    // Each waited about 500 ms, side by side; never an unbounded wait.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(upstream.accepted(), 20);
    let metrics = keygate.metrics().await;
    assert!(
        counter(
            &metrics,
            "keygate_upstream_errors_total",
            &["kind=\"timeout\""]
        ) >= 20.0
    );

    // An upstream whose accept queue is full: the kernel drops the SYN, so
    // connecting hangs until upstream-timeout, then 502.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let connect = tokio::net::TcpStream::connect(full_addr);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            fillers.push(s);
        }
    }
    let unreachable = keygate_in_front_of(
        &format!("http://{full_addr}"),
        "upstream-timeout: 300ms\nupstream-response-header-timeout: 3s\n",
    )
    .await;
    let started = Instant::now();
    let resp = http.get(unreachable.url("/x")).send().await.unwrap();
    let took = started.elapsed();
    eprintln!(
        "an upstream that never completes the handshake: {} after {took:?}",
        resp.status()
    );
    assert_eq!(resp.status(), 502);
    assert!(
        took >= Duration::from_millis(250),
        "the connect timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    drop((fillers, full));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_body_that_stalls_is_cut_after_the_idle_timeout() {
    let upstream = RawUpstream::start(Then::StallBody).await;
    let keygate = keygate_in_front_of(&upstream.url(), "upstream-idle-timeout: 500ms\n").await;
    let before = counter(
        &keygate.metrics().await,
        "keygate_upstream_errors_total",
        &["kind=\"idle\""],
    );
    let started = Instant::now();
    let resp = client().get(keygate.url("/stall")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the headers came in time");
    // The body never completes: the client sees it end early, within the
    // idle timeout (not never).
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("a stalled body must be cut, not left hanging");
    let took = started.elapsed();
    eprintln!("stalled body cut after {took:?}: {body:?}");
    assert!(body.is_err(), "a cut body is not a complete one");
    assert!(took >= Duration::from_millis(450), "{took:?}");
    let after = counter(
        &keygate.metrics().await,
        "keygate_upstream_errors_total",
        &["kind=\"idle\""],
    );
    assert_eq!(after - before, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_that_stalls_is_the_clients_408() {
    let upstream = Upstream::start().await;
    let keygate = keygate_in_front_of(&upstream.url(), "upstream-idle-timeout: 500ms\n").await;
    let mut conn = tokio::net::TcpStream::connect(keygate.addr).await.unwrap();
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: test\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .expect("a stalled upload must be answered")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    eprintln!("stalled upload answered after {:?}", started.elapsed());
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_concurrent_requests_keygate_answers_503_with_retry_after_at_once() {
    let upstream = RawUpstream::start(Then::Hang).await;
    let keygate = keygate_in_front_of(
        &upstream.url(),
        "max-concurrent-requests: 5\nupstream-response-header-timeout: 4s\n",
    )
    .await;
    let http = client();
    let shed_before = counter(&keygate.metrics().await, "keygate_requests_shed_total", &[]);
    // Five requests fill the bound: they wait for the hung upstream.
    let held: Vec<_> = (0..5)
        .map(|i| {
            let (http, url) = (http.clone(), keygate.url(&format!("/held/{i}")));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.accepted() < 5 {
        assert!(Instant::now() < deadline, "the held requests never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fifty more, at once: each is answered 503 at once, not queued behind
    // the five (which take 4 s).
    let started = Instant::now();
    let shed: Vec<_> = (0..50)
        .map(|i| {
            let (http, url) = (http.clone(), keygate.url(&format!("/more/{i}")));
            tokio::spawn(async move {
                let resp = http.get(url).send().await.unwrap();
                let status = resp.status().as_u16();
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body: serde_json::Value = resp.json().await.unwrap();
                (status, retry, body["error"].as_str().map(str::to_owned))
            })
        })
        .collect();
    for call in shed {
        let (status, retry, error) = call.await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(error.as_deref(), Some("temporarily_unavailable"));
    }
    let took = started.elapsed();
    eprintln!("50 requests past the bound all shed in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "shed at once, not queued: {took:?}"
    );
    assert_eq!(upstream.accepted(), 5, "nothing shed reached the upstream");
    // The probes are never shed; the operations port is not bounded.
    let health = http.get(keygate.url("/oauth/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let shed_after = counter(&keygate.metrics().await, "keygate_requests_shed_total", &[]);
    assert_eq!(shed_after - shed_before, 50.0);
    // Once the held requests end (504), requests are let in again.
    for call in held {
        assert_eq!(call.await.unwrap(), 504);
    }
    let resp = http.get(keygate.url("/after")).send().await.unwrap();
    assert_eq!(resp.status(), 504, "admitted, and bounded by its timeout");
    assert_eq!(upstream.accepted(), 6);
}
