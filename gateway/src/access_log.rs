//! The access log: one line per request, formatted on the request path into
//! a shared buffer and written by a background thread in batches (every
//! 100 ms, or sooner when 64 KiB are waiting), so a request costs a format
//! and no syscall. The fields, and the text and JSON shapes, are the ones
//! the `vestibule::access` tracing events had. Bounded: when the output
//! cannot keep up, lines past 8 MiB waiting are dropped and counted.

use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::LogFormat;

/// Written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Written at once past this much.
const FLUSH_AT: usize = 64 * 1024;
/// Lines are dropped past this much waiting.
const MAX_WAITING: usize = 8 * 1024 * 1024;

/// One request, as logged.
pub struct Entry<'a> {
    pub tenant: &'a str,
    pub route: &'a str,
    pub client: Option<IpAddr>,
    pub host: &'a [u8],
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub duration: Duration,
    pub bytes: usize,
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .field("dropped", &self.dropped)
            .finish()
    }
}

pub struct AccessLog {
    format: LogFormat,
    waiting: Mutex<Vec<u8>>,
    wake: Condvar,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the writer thread, writing to `out`.
    pub fn start(format: LogFormat, out: Box<dyn Write + Send>) -> std::io::Result<Arc<Self>> {
        let log = Arc::new(AccessLog {
            format,
            waiting: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = log.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.write_loop(out))?;
        Ok(log)
    }

    /// Formats `e` into the buffer (no allocation once the buffer has grown).
    pub fn log(&self, e: &Entry<'_>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() >= MAX_WAITING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut line = Line(&mut waiting);
        let _ = match self.format {
            LogFormat::Text => text(&mut line, e),
            LogFormat::Json => json(&mut line, e),
        };
        let full = waiting.len() >= FLUSH_AT;
        drop(waiting);
        if full {
            self.wake.notify_one();
        }
    }

    fn write_loop(&self, mut out: Box<dyn Write + Send>) {
        let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT * 2);
        let mut reported = 0;
        loop {
            // Said where operators look, once per batch that lost lines.
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > reported {
                tracing::warn!(
                    lines = dropped - reported,
                    "access log lines dropped: the log output does not keep up"
                );
                reported = dropped;
            }
            {
                let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let (mut waiting, _) = self
                    .wake
                    .wait_timeout_while(waiting, FLUSH_EVERY, |w| w.len() < FLUSH_AT)
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *waiting, &mut spare);
            }
            if !spare.is_empty() {
                // Nowhere to report a failed write but the next one.
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
                if spare.capacity() > FLUSH_AT * 4 {
                    spare.shrink_to(FLUSH_AT * 2);
                }
            }
        }
    }
}

/// `fmt::Write` into the byte buffer.
struct Line<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `2026-12-05T20:44:56.364777Z`, from the system clock.
fn timestamp(out: &mut Line<'_>) -> std::fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let rem = secs % 86_400;
    let (year, month, day) = civil(secs / 86_400);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// The civil date of a day counted from 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil(days: u64) -> (i64, i64, i64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// A string as a JSON string (also the quoted form of text fields).
fn quoted(out: &mut Line<'_>, s: &str) -> std::fmt::Result {
    out.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

fn text(out: &mut Line<'_>, e: &Entry<'_>) -> std::fmt::Result {
    timestamp(out)?;
    out.write_str("  INFO vestibule::access: tenant=")?;
    quoted(out, e.tenant)?;
    out.write_str(" route=")?;
    quoted(out, e.route)?;
    if let Some(c) = e.client {
        write!(out, " client={c}")?;
    }
    out.write_str(" host=")?;
    out.write_str(&String::from_utf8_lossy(e.host))?;
    write!(out, " method={} path=", e.method)?;
    quoted(out, e.path)?;
    write!(out, " status={}", e.status)?;
    if let Some(u) = e.upstream {
        write!(out, " upstream={u}")?;
    }
    write!(
        out,
        " duration_ms={} bytes={}",
        e.duration.as_secs_f64() * 1000.0,
        e.bytes
    )?;
    if let Some(err) = e.error {
        write!(out, " error={err}")?;
    }
    out.write_char('\n')
}

fn json(out: &mut Line<'_>, e: &Entry<'_>) -> std::fmt::Result {
    out.write_str("{\"timestamp\":\"")?;
    timestamp(out)?;
    out.write_str("\",\"level\":\"INFO\",\"tenant\":")?;
    quoted(out, e.tenant)?;
    out.write_str(",\"route\":")?;
    quoted(out, e.route)?;
    if let Some(c) = e.client {
        write!(out, ",\"client\":\"{c}\"")?;
    }
    out.write_str(",\"host\":")?;
    quoted(out, &String::from_utf8_lossy(e.host))?;
    out.write_str(",\"method\":")?;
    quoted(out, e.method)?;
    out.write_str(",\"path\":")?;
    quoted(out, e.path)?;
    write!(out, ",\"status\":{}", e.status)?;
    if let Some(u) = e.upstream {
        write!(out, ",\"upstream\":\"{u}\"")?;
    }
    write!(
        out,
        ",\"duration_ms\":{},\"bytes\":{}",
        e.duration.as_secs_f64() * 1000.0,
        e.bytes
    )?;
    if let Some(err) = e.error {
        out.write_str(",\"error\":")?;
        quoted(out, &err.to_string())?;
    }
    out.write_str(",\"target\":\"vestibule::access\"}\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry<'a>(path: &'a str, error: Option<&'a dyn std::fmt::Display>) -> Entry<'a> {
        Entry {
            tenant: "acme",
            route: "ingress/shop/web",
            client: Some("10.1.2.3".parse().unwrap()),
            host: b"shop.example.com",
            method: "GET",
            path,
            status: 200,
            upstream: Some("10.0.0.1:8080".parse().unwrap()),
            duration: Duration::from_micros(1500),
            bytes: 42,
            error,
        }
    }

    fn written(out: &Shared, lines: usize) -> String {
        for _ in 0..100 {
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            if text.lines().count() >= lines {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("not written");
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let out = Shared::default();
        let log = AccessLog::start(LogFormat::Json, Box::new(out.clone())).unwrap();
        let why = "upstream refused";
        log.log(&entry("/a \"quoted\"\npath", Some(&why)));
        log.log(&entry("/b", None));
        let text = written(&out, 2);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["path"], "/a \"quoted\"\npath");
        assert_eq!(lines[0]["error"], "upstream refused");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["client"], "10.1.2.3");
        assert_eq!(lines[0]["upstream"], "10.0.0.1:8080");
        assert_eq!(lines[0]["duration_ms"], 1.5);
        assert_eq!(lines[0]["target"], "vestibule::access");
        assert_eq!(lines[1]["path"], "/b");
        assert!(lines[1].get("error").is_none());
        let ts = lines[0]["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-12-05T20:44:56.364777Z".len(), "{ts}");
        assert!(ts.starts_with("20"), "{ts}");
    }

    #[test]
    fn text_lines_read_as_before_and_writes_are_batched() {
        let out = Shared::default();
        let log = AccessLog::start(LogFormat::Text, Box::new(out.clone())).unwrap();
        for _ in 0..1000 {
            log.log(&entry("/", None));
        }
        let text = written(&out, 1000);
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(" INFO vestibule::access: tenant=\"acme\" route=\"ingress/shop/web\" client=10.1.2.3 host=shop.example.com method=GET path=\"/\" status=200 upstream=10.0.0.1:8080 duration_ms=1.5 bytes=42"),
            "{first}"
        );
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);
    }

    /// An output that never returns from a write.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_lines_and_never_blocks_a_request() {
        let log = AccessLog::start(LogFormat::Text, Box::new(Stuck)).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..60_000 {
            log.log(&entry("/", None));
        }
        assert!(log.dropped.load(Ordering::Relaxed) > 0);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let waiting = log.waiting.lock().unwrap().len();
        assert!(waiting <= MAX_WAITING + 1024, "{waiting}");
    }

    #[test]
    fn the_date_is_the_civil_date() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(11_017), (2000, 3, 1));
        assert_eq!(civil(20_792), (2026, 12, 5));
        assert_eq!(civil(20_818), (2026, 12, 31));
        assert_eq!(civil(20_819), (2027, 1, 1));
    }
}
