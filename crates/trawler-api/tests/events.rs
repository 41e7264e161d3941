//! The live-update stream over real sockets: a subscriber gets every sample
//! in order, a subscriber that stops reading is dropped without holding up
//! the others, subscribers are capped, shutdown ends open streams, and the
//! health history keeps the last samples.
//!
//! The backend is a small in-test read model whose statistics count up, so
//! every sample can be told apart by its `seq`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use trawler_api::{
    ApiConfig, ApiError, Backend, Entity, Figures, HttpMetrics, JobInfo, Points, SeriesQuery,
    Stats, TopBy, TopEntries, TrackOutcome,
};

/// A read model whose statistics change on every read, with `padding`
/// bytes to make samples as large as a test needs.
struct Counting {
    reads: AtomicU64,
    info: JobInfo,
}

impl Counting {
    fn new(padding: usize) -> Self {
        Self {
            reads: AtomicU64::new(0),
            info: JobInfo {
                name: "things".into(),
                key_name: "id".into(),
                string_keys: false,
                label_name: None,
                metrics: vec!["v".into()],
                rank_metric: "v".into(),
                // The padding: the average's name is a member of every
                // sample, and the one name a job may make as long as it likes.
                average: format!("average{}", "V".repeat(padding)),
                flag: None,
            },
        }
    }
}

impl Backend for Counting {
    fn info(&self) -> &JobInfo {
        &self.info
    }
    fn key(&self, text: &str) -> Result<Option<u64>, ApiError> {
        text.parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request("bad_key", "not a number"))
    }
    fn key_json(&self, id: u64) -> Value {
        id.into()
    }
    fn entity(&self, _: u64) -> Result<Option<Entity>, ApiError> {
        Ok(None)
    }
    fn series(&self, _: u64, _: &str, _: SeriesQuery) -> Result<Option<Points>, ApiError> {
        Ok(None)
    }
    fn track(&self, _: &[String]) -> Result<TrackOutcome, ApiError> {
        Ok(TrackOutcome::default())
    }
    fn untrack(&self, _: u64) -> Result<bool, ApiError> {
        Ok(false)
    }
    fn stats(&self) -> Stats {
        let n = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        Stats {
            figures: Figures {
                polls: n * 100,
                ..Figures::default()
            },
            ..Stats::default()
        }
    }
    fn invalid(&self, _: Option<u64>, _: usize) -> Vec<u64> {
        Vec::new()
    }
    fn render_metrics(&self, _: &mut String) {}
    fn top(&self, _: TopBy, _: usize) -> TopEntries {
        TopEntries::Ranked(Vec::new())
    }
    fn flagged(&self, _: Option<u64>, _: usize) -> Vec<u64> {
        Vec::new()
    }
    fn average_series(&self, _: SeriesQuery) -> Result<Points, ApiError> {
        Ok(Vec::new())
    }
}

struct Server {
    addr: SocketAddr,
    metrics: Arc<HttpMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves the API over a loopback listener. `send_buffer` shrinks the
/// kernel's send buffer of accepted connections (as on a slow link), so a
/// client that stops reading is felt after a few kilobytes.
async fn serve(config: ApiConfig, padding: usize, send_buffer: Option<u32>) -> Server {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = send_buffer {
        socket.set_send_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(Counting::new(padding));
    let api = config.build(backend).unwrap();
    let metrics = api.http_metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(api.serve(listener, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        metrics,
        stop: Some(stop),
        task,
    }
}

fn fast_events() -> ApiConfig {
    ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        events_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

/// An event-stream client over a raw socket: parses the status line, the
/// chunked body and the `data:` lines of each event.
struct Subscriber {
    reader: BufReader<TcpStream>,
    status: u16,
    pending: String,
}

impl Subscriber {
    async fn connect(addr: SocketAddr, recv_buffer: Option<u32>) -> Subscriber {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /api/v1/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
            )
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut content_type = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-type:") {
                content_type = v.trim().to_owned();
            }
        }
        if status == 200 {
            assert_eq!(content_type, "text/event-stream");
        }
        Subscriber {
            reader,
            status,
            pending: String::new(),
        }
    }

    /// The body of a non-200 answer (read until the connection closes or
    /// the declared length is read; these answers are small).
    async fn error_body(&mut self) -> Value {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(&buf[..n]).unwrap()
    }

    /// The next `stats` event's data, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                    .collect();
                if event.lines().any(|l| l == "event: stats") {
                    return Some(serde_json::from_str(&data).unwrap());
                }
                continue; // a keep-alive comment
            }
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0u8; size + 2];
            self.reader.read_exact(&mut chunk).await.ok()?;
            self.pending
                .push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        }
    }

    async fn next_within(&mut self, limit: Duration) -> Value {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("no event in time")
            .expect("the stream ended")
    }
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_every_sample_in_order() {
    let server = serve(fast_events(), 0, None).await;
    let mut sub = Subscriber::connect(server.addr, None).await;
    assert_eq!(sub.status, 200);
    let first = sub.next_within(Duration::from_secs(5)).await;
    let mut seq = first["seq"].as_u64().unwrap();
    for _ in 0..10 {
        let event = sub.next_within(Duration::from_secs(5)).await;
        let next = event["seq"].as_u64().unwrap();
        assert_eq!(next, seq + 1, "a sample was skipped or repeated");
        assert_eq!(event["polls"], next * 100, "the sample carries the stats");
        assert!(event["t"].as_i64().unwrap() > 1_600_000_000_000);
        seq = next;
    }
    assert_eq!(server.metrics.subscribers(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_and_others_keep_up() {
    // 16 KiB samples every 20 ms against ~10 KiB of socket buffers: a client
    // that stops reading fills its queue (32 samples) within a second, while
    // the reader would have to stall for 640 ms to be dropped too.
    let config = ApiConfig {
        subscriber_queue: 32,
        ..fast_events()
    };
    let server = serve(config, 16 * 1024, Some(4 * 1024)).await;
    let mut reader = Subscriber::connect(server.addr, None).await;
    let stalled = Subscriber::connect(server.addr, Some(4 * 1024)).await;
    assert_eq!((reader.status, stalled.status), (200, 200));

    // The reader keeps reading while the other one is stuck; it must not
    // miss a sample before, during or after the drop.
    let metrics = server.metrics.clone();
    let reading = tokio::spawn(async move {
        let mut last = reader.next_within(Duration::from_secs(5)).await["seq"]
            .as_u64()
            .unwrap();
        let mut after_drop = 0;
        while after_drop < 25 {
            let seq = reader.next_within(Duration::from_secs(5)).await["seq"]
                .as_u64()
                .unwrap();
            assert_eq!(seq, last + 1, "the reader missed a sample");
            last = seq;
            if metrics.subscribers_dropped() > 0 {
                after_drop += 1;
            }
        }
        reader
    });
    eventually(
        "the stalled subscriber is dropped",
        Duration::from_secs(20),
        || server.metrics.subscribers_dropped() == 1,
    )
    .await;
    let _reader = reading.await.unwrap();
    assert_eq!(server.metrics.subscribers(), 1, "the stalled slot is freed");
    assert_eq!(
        server.metrics.subscribers_dropped(),
        1,
        "only the stalled one"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_beyond_the_limit_get_a_503_and_freed_slots_are_reused() {
    let config = ApiConfig {
        max_subscribers: 2,
        ..fast_events()
    };
    let server = serve(config, 0, None).await;
    let mut a = Subscriber::connect(server.addr, None).await;
    let b = Subscriber::connect(server.addr, None).await;
    assert_eq!((a.status, b.status), (200, 200));
    a.next_within(Duration::from_secs(5)).await;

    let mut refused = Subscriber::connect(server.addr, None).await;
    assert_eq!(refused.status, 503);
    let body = refused.error_body().await;
    assert_eq!(body["error"]["code"], "too_many_subscribers", "{body}");

    drop(b);
    eventually(
        "the closed subscriber's slot is freed",
        Duration::from_secs(5),
        || server.metrics.subscribers() == 1,
    )
    .await;
    let mut c = Subscriber::connect(server.addr, None).await;
    assert_eq!(c.status, 200);
    c.next_within(Duration::from_secs(5)).await;
    assert_eq!(server.metrics.subscribers_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_the_server_returns() {
    let mut server = serve(fast_events(), 0, None).await;
    let mut sub = Subscriber::connect(server.addr, None).await;
    sub.next_within(Duration::from_secs(5)).await;
    server.stop.take().unwrap().send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("graceful shutdown waited on an open event stream");
    served.unwrap().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while sub.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_history_keeps_the_latest_samples_in_order() {
    let config = ApiConfig {
        history_len: 5,
        ..fast_events()
    };
    let server = serve(config, 0, None).await;
    let mut sub = Subscriber::connect(server.addr, None).await;
    let mut last = 0;
    while last < 12 {
        last = sub.next_within(Duration::from_secs(5)).await["seq"]
            .as_u64()
            .unwrap();
    }
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/things/health/history HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let history: Value = serde_json::from_str(body).unwrap();
    assert_eq!(history["intervalMs"], 20);
    let seqs: Vec<u64> = history["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 5, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(seqs[4] >= 12, "{seqs:?}");
}
