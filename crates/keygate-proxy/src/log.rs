//! Phase 6, **log**: one structured access-log line and the request
//! metrics.
//!
//! The line is the one `tracing`'s formatter would write for an event of
//! target `keygate::access` (same fields, same text and JSON shapes), and
//! the `log-level` filter decides whether it is written, as for every other
//! line. It does not go through `tracing`'s formatter and writer, though:
//! those cost more than the rest of a cached request (field visitors,
//! `fmt::write`, a timestamp formatted from scratch, a channel send and a
//! writer-thread wake-up per line). Lines are formatted here into the
//! calling thread's buffer and handed to a writer thread in batches: when a
//! buffer passes [`BATCH`] bytes, and every [`FLUSH_EVERY`] by the writer
//! itself, so a quiet gateway's last lines reach stdout promptly. The hand
//! over blocks when the writer is [`QUEUED_BATCHES`] batches behind (a slow
//! stdout slows requests down rather than dropping lines or growing memory).
//!
//! The request metrics use counter handles kept per thread, so a request
//! pays an atomic increment, not a registry lookup.

use crate::context::{Decision, RequestCtx};
use keygate_core::Reason;
use keygate_core::config::LogFormat;
use std::cell::RefCell;
use std::io::Write as _;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A thread's buffer is handed to the writer once it holds this much.
pub const BATCH: usize = 32 * 1024;
/// How often the writer collects what the threads have buffered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Batches waiting for the writer before a hand over blocks.
pub const QUEUED_BATCHES: usize = 64;

/// Phase 6: one structured line and the metrics for the request.
pub fn log(format: LogFormat, ctx: &RequestCtx, status: http::StatusCode) {
    let elapsed = ctx.started.elapsed();
    count(ctx);
    REQUEST_DURATIONS.with(|d| {
        d.borrow_mut()[ctx.decision as usize]
            .get_or_insert_with(|| {
                metrics::histogram!("keygate_request_duration_seconds",
                    "decision" => ctx.decision.as_str())
            })
            .record(elapsed.as_secs_f64());
    });
    if !tracing::enabled!(target: "keygate::access", tracing::Level::INFO) {
        return;
    }
    let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    writer().write(|buf| match format {
        LogFormat::Text => text_line(buf, ctx, status.as_u16(), duration_us),
        LogFormat::Json => json_line(buf, ctx, status.as_u16(), duration_us),
    });
}

// ------------------------------------------------------------ metrics

/// A `keygate_requests_total` handle and its route, decision and reason.
type CounterEntry = (Box<str>, Decision, Reason, metrics::Counter);

thread_local! {
    /// `keygate_requests_total` handles by route, decision and reason.
    static REQUEST_COUNTERS: RefCell<Vec<CounterEntry>> =
        const { RefCell::new(Vec::new()) };
    /// `keygate_request_duration_seconds` handles by decision.
    static REQUEST_DURATIONS: RefCell<[Option<metrics::Histogram>; Decision::COUNT]> =
        const { RefCell::new([const { None }; Decision::COUNT]) };
}

/// Handles kept per thread at most; past it (a config with very many
/// rules, every one in use) a request looks its counter up.
const MAX_COUNTERS: usize = 512;

/// Counts the request. The handle is found in the thread's list of the
/// combinations seen (routes, decisions and reasons are finite: the rules of
/// the config), most recently added first, without an allocation.
fn count(ctx: &RequestCtx) {
    REQUEST_COUNTERS.with(|counters| {
        let mut counters = counters.borrow_mut();
        let hit = counters.iter().rev().find(|(route, decision, reason, _)| {
            *decision == ctx.decision && *reason == ctx.reason && **route == *ctx.route
        });
        if let Some((.., counter)) = hit {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(
            "keygate_requests_total",
            "route" => ctx.route.clone(),
            "decision" => ctx.decision.as_str(),
            "reason" => ctx.reason.as_str(),
        );
        counter.increment(1);
        if counters.len() < MAX_COUNTERS {
            counters.push((ctx.route.as_str().into(), ctx.decision, ctx.reason, counter));
        }
    });
}

// ------------------------------------------------------------ the writer

/// Buffers of formatted lines, one per thread, and the writer thread that
/// writes them to stdout.
struct Writer {
    /// Every thread's buffer, for the writer's periodic collection.
    buffers: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    batches: SyncSender<Vec<u8>>,
}

thread_local! {
    /// This thread's buffer (also listed in `Writer::buffers`).
    static BUFFER: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (batches, receive) = std::sync::mpsc::sync_channel(QUEUED_BATCHES);
        let writer = Writer {
            buffers: Mutex::new(Vec::new()),
            batches,
        };
        let spawned = std::thread::Builder::new()
            .name("keygate-access-log".into())
            .spawn(move || write_batches(receive));
        if let Err(e) = spawned {
            // Without the thread, batches are written by the threads that
            // fill them (see `Writer::write`).
            tracing::warn!(error = %e, "no access-log writer thread; request threads write");
        }
        writer
    })
}

impl Writer {
    /// Formats one line with `format` into this thread's buffer, and hands
    /// the buffer over when it is full.
    fn write(&'static self, format: impl FnOnce(&mut Vec<u8>)) {
        BUFFER.with(|slot| {
            let mut slot = slot.borrow_mut();
            let buffer = slot.get_or_insert_with(|| {
                let buffer = Arc::new(Mutex::new(Vec::with_capacity(BATCH + 1024)));
                if let Ok(mut all) = self.buffers.lock() {
                    all.push(Arc::clone(&buffer));
                }
                buffer
            });
            let full = {
                let Ok(mut buf) = buffer.lock() else { return };
                format(&mut buf);
                (buf.len() >= BATCH)
                    .then(|| std::mem::replace(&mut *buf, Vec::with_capacity(BATCH + 1024)))
            };
            if let Some(batch) = full {
                self.hand_over(batch);
            }
        });
    }

    fn hand_over(&self, batch: Vec<u8>) {
        match self.batches.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) => {
                // The writer is behind: wait for it rather than drop lines.
                if let Err(e) = self.batches.send(batch) {
                    write_out(&e.0);
                }
            }
            Err(TrySendError::Disconnected(batch)) => write_out(&batch),
        }
    }

    /// Takes what every thread has buffered.
    fn collect(&self) -> Vec<Vec<u8>> {
        let Ok(all) = self.buffers.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter_map(|b| {
                let mut b = b.lock().ok()?;
                (!b.is_empty()).then(|| std::mem::take(&mut *b))
            })
            .collect()
    }
}

/// The writer thread: writes handed-over batches, and every
/// [`FLUSH_EVERY`] collects the threads' partial buffers.
fn write_batches(batches: Receiver<Vec<u8>>) {
    loop {
        match batches.recv_timeout(FLUSH_EVERY) {
            Ok(batch) => write_out(&batch),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for batch in writer().collect() {
                    write_out(&batch);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Writes whole lines to stdout, holding its lock, so batches from several
/// threads never interleave inside a line.
fn write_out(batch: &[u8]) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = out.write_all(batch);
    let _ = out.flush();
}

/// Writes what is buffered now (at shutdown).
pub fn flush() {
    let w = writer();
    for batch in w.collect() {
        write_out(&batch);
    }
}

// ------------------------------------------------------------ formats

/// `tracing`'s full text format: `2026-12-07T19:00:00.123456Z  INFO
/// keygate::access: request_id="…" client=127.0.0.1 …` (strings recorded as
/// `&str` quoted and escaped, `Display` values as written).
fn text_line(buf: &mut Vec<u8>, ctx: &RequestCtx, status: u16, duration_us: u64) {
    timestamp(buf);
    buf.extend_from_slice(b"  INFO keygate::access: request_id=");
    debug_str(buf, ctx.request_id.to_str().unwrap_or("-"));
    buf.extend_from_slice(b" client=");
    let mut ip = [0u8; 64];
    buf.extend_from_slice(crate::context::ip_text(ctx.peer.ip(), &mut ip));
    buf.extend_from_slice(b" method=");
    buf.extend_from_slice(ctx.method.as_str().as_bytes());
    buf.extend_from_slice(b" path=");
    buf.extend_from_slice(ctx.path.as_bytes());
    buf.extend_from_slice(b" route=");
    buf.extend_from_slice(ctx.route.as_bytes());
    buf.extend_from_slice(b" status=");
    number(buf, u64::from(status));
    buf.extend_from_slice(b" decision=");
    debug_str(buf, ctx.decision.as_str());
    buf.extend_from_slice(b" reason=");
    buf.extend_from_slice(ctx.reason.as_str().as_bytes());
    buf.extend_from_slice(b" subject=");
    debug_str(
        buf,
        ctx.identity.as_ref().map_or("", |i| i.subject.as_str()),
    );
    buf.extend_from_slice(b" duration_us=");
    number(buf, duration_us);
    buf.push(b'\n');
}

/// `tracing`'s JSON format with flattened fields.
fn json_line(buf: &mut Vec<u8>, ctx: &RequestCtx, status: u16, duration_us: u64) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
    json_str(buf, ctx.request_id.to_str().unwrap_or("-"));
    buf.extend_from_slice(b",\"client\":\"");
    let mut ip = [0u8; 64];
    buf.extend_from_slice(crate::context::ip_text(ctx.peer.ip(), &mut ip));
    buf.extend_from_slice(b"\",\"method\":");
    json_str(buf, ctx.method.as_str());
    buf.extend_from_slice(b",\"path\":");
    json_str(buf, &ctx.path);
    buf.extend_from_slice(b",\"route\":");
    json_str(buf, &ctx.route);
    buf.extend_from_slice(b",\"status\":");
    number(buf, u64::from(status));
    buf.extend_from_slice(b",\"decision\":\"");
    buf.extend_from_slice(ctx.decision.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"reason\":\"");
    buf.extend_from_slice(ctx.reason.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"subject\":");
    json_str(
        buf,
        ctx.identity.as_ref().map_or("", |i| i.subject.as_str()),
    );
    buf.extend_from_slice(b",\"duration_us\":");
    number(buf, duration_us);
    buf.extend_from_slice(b",\"target\":\"keygate::access\"}\n");
}

fn number(buf: &mut Vec<u8>, n: u64) {
    let mut digits = itoa::Buffer::new();
    buf.extend_from_slice(digits.format(n).as_bytes());
}

/// A string as Rust's `Debug` writes it (what `tracing` records for `&str`).
fn debug_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// A JSON string.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for c in s.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            '\n' => buf.extend_from_slice(b"\\n"),
            '\r' => buf.extend_from_slice(b"\\r"),
            '\t' => buf.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    buf.push(b'"');
}

thread_local! {
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds, as `tracing` writes it:
/// `2026-12-07T19:00:00.123456Z`. The date and time of day are formatted
/// once per second per thread.
fn timestamp(buf: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, civil(secs));
        }
        buf.extend_from_slice(&cached.1);
    });
    let micros = now.subsec_micros();
    let mut frac = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut m = micros;
    for i in (1..7).rev() {
        frac[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    buf.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (the proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, (rem / 3600) as i64, 2);
    put(14, (rem / 60 % 60) as i64, 2);
    put(17, (rem % 60) as i64, 2);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&civil(1_798_761_599), b"2026-12-31T23:59:59");
        assert_eq!(&civil(4_107_542_400), b"2100-03-01T00:00:00");
    }

    #[test]
    fn strings_are_escaped_as_tracing_does() {
        let mut b = Vec::new();
        debug_str(&mut b, "plain-id_1");
        debug_str(&mut b, "a\"b\\c\n");
        assert_eq!(String::from_utf8(b).unwrap(), r#""plain-id_1""a\"b\\c\n""#);
        let mut b = Vec::new();
        json_str(&mut b, "a\"b\\c\n\u{1}é");
        let parsed: String = serde_json::from_slice(&b).unwrap();
        assert_eq!(parsed, "a\"b\\c\n\u{1}é");
    }

    #[test]
    fn timestamps_have_microseconds() {
        let mut b = Vec::new();
        timestamp(&mut b);
        let s = String::from_utf8(b).unwrap();
        assert_eq!(s.len(), 27, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[19] == b'.', "{s}");
    }
}
