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
    waiting: Mutex<Waiting>,
    wake: Condvar,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the writer thread, writing to `out`.
    pub fn start(format: LogFormat, out: Box<dyn Write + Send>) -> std::io::Result<Arc<Self>> {
        let log = Arc::new(AccessLog {
            format,
            waiting: Mutex::new(Waiting {
                lines: Vec::with_capacity(FLUSH_AT * 2),
                stamp: Stamp::default(),
            }),
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
        if waiting.lines.len() >= MAX_WAITING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Waiting { lines, stamp } = &mut *waiting;
        let mut line = Line(lines);
        let _ = self::line(&mut line, stamp, e, self.format);
        let full = waiting.lines.len() >= FLUSH_AT;
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
                    .wait_timeout_while(waiting, FLUSH_EVERY, |w| w.lines.len() < FLUSH_AT)
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut waiting.lines, &mut spare);
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

/// The lines waiting for the writer, and the current second's timestamp.
struct Waiting {
    lines: Vec<u8>,
    stamp: Stamp,
}

/// `YYYY-MM-DDTHH:MM:SS` of the last second a line was logged in: the date
/// is worked out once a second, not per line.
#[derive(Default)]
struct Stamp {
    secs: u64,
    text: Vec<u8>,
}

/// Appends to the byte buffer. Lines are built from pieces written directly
/// (numbers by `itoa`, addresses octet by octet): `core::fmt` cost ~8k
/// instructions a line, a third of a proxied request.
struct Line<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl Line<'_> {
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    fn num(&mut self, n: impl itoa::Integer) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    /// `n` zero-padded to `width` digits (`width` ≤ 6).
    fn padded(&mut self, n: u32, width: usize) {
        let mut digits = [b'0'; 6];
        let mut n = n;
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.raw(&digits[..width]);
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                self.num(a);
                self.raw(b".");
                self.num(b);
                self.raw(b".");
                self.num(c);
                self.raw(b".");
                self.num(d);
            }
            IpAddr::V6(v6) => {
                let _ = write!(self, "{v6}");
            }
        }
    }

    fn addr(&mut self, addr: SocketAddr) {
        match addr {
            SocketAddr::V4(a) => {
                self.ip(IpAddr::V4(*a.ip()));
                self.raw(b":");
                self.num(a.port());
            }
            SocketAddr::V6(_) => {
                let _ = write!(self, "{addr}");
            }
        }
    }

    /// Milliseconds with up to three decimals (microseconds), trailing
    /// zeros dropped: `1.5`, `341.227`, `12`.
    fn millis(&mut self, d: Duration) {
        let us = d.as_micros();
        self.num(us / 1_000);
        let mut frac = (us % 1_000) as u32;
        if frac == 0 {
            return;
        }
        let mut width = 3;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        self.raw(b".");
        self.padded(frac, width);
    }

    fn timestamp(&mut self, stamp: &mut Stamp) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        if stamp.text.is_empty() || stamp.secs != secs {
            let rem = secs % 86_400;
            let (year, month, day) = civil(secs / 86_400);
            stamp.secs = secs;
            stamp.text.clear();
            let _ = write!(
                Line(&mut stamp.text),
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rem / 3_600,
                rem % 3_600 / 60,
                rem % 60,
            );
        }
        self.raw(&stamp.text);
        self.raw(b".");
        self.padded(now.subsec_micros(), 6);
        self.raw(b"Z");
    }

    /// What `write` writes, in double quotes when `json` (addresses are
    /// JSON strings, bare in the text shape).
    fn in_json_quotes(&mut self, json: bool, write: impl FnOnce(&mut Self)) {
        if json {
            self.raw(b"\"");
        }
        write(self);
        if json {
            self.raw(b"\"");
        }
    }

    /// `s` in double quotes, escaped as JSON strings are.
    fn quoted(&mut self, s: &str) {
        self.raw(b"\"");
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.raw(s.as_bytes());
        } else {
            for c in s.chars() {
                let _ = match c {
                    '"' => self.write_str("\\\""),
                    '\\' => self.write_str("\\\\"),
                    '\n' => self.write_str("\\n"),
                    '\r' => self.write_str("\\r"),
                    '\t' => self.write_str("\\t"),
                    c if (c as u32) < 0x20 => write!(self, "\\u{:04x}", c as u32),
                    c => self.write_char(c),
                };
            }
        }
        self.raw(b"\"");
    }
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

/// One field's value, as both shapes write it.
enum Value<'a> {
    /// A string, quoted (and escaped) in both shapes.
    Quoted(&'a str),
    /// Text the text shape writes as it is (as the tracing events did) and
    /// JSON quotes.
    Bare(&'a str),
    Ip(IpAddr),
    Addr(SocketAddr),
    Num(u64),
    Millis(Duration),
    Error(&'a dyn std::fmt::Display),
}

/// Writes one line: the fields of `e`, in the one order both shapes share,
/// `key=value` after tracing's text prefix or as a JSON object.
fn line(
    out: &mut Line<'_>,
    stamp: &mut Stamp,
    e: &Entry<'_>,
    format: LogFormat,
) -> std::fmt::Result {
    use Value::*;
    let host = String::from_utf8_lossy(e.host);
    let fields = [
        ("tenant", Some(Quoted(e.tenant))),
        ("route", Some(Quoted(e.route))),
        ("client", e.client.map(Ip)),
        ("host", Some(Bare(&host))),
        ("method", Some(Bare(e.method))),
        ("path", Some(Quoted(e.path))),
        ("status", Some(Num(e.status.into()))),
        ("upstream", e.upstream.map(Addr)),
        ("duration_ms", Some(Millis(e.duration))),
        ("bytes", Some(Num(e.bytes as u64))),
        ("error", e.error.map(Error)),
    ];
    let json = format == LogFormat::Json;
    if json {
        out.raw(b"{\"timestamp\":\"");
        out.timestamp(stamp);
        out.raw(b"\",\"level\":\"INFO\"");
    } else {
        out.timestamp(stamp);
        out.raw(b"  INFO vestibule::access:");
    }
    for (key, value) in fields {
        let Some(value) = value else { continue };
        if json {
            out.raw(b",\"");
            out.raw(key.as_bytes());
            out.raw(b"\":");
        } else {
            out.raw(b" ");
            out.raw(key.as_bytes());
            out.raw(b"=");
        }
        match value {
            Quoted(v) => out.quoted(v),
            Bare(v) if json => out.quoted(v),
            Bare(v) => out.raw(v.as_bytes()),
            Ip(ip) => out.in_json_quotes(json, |out| out.ip(ip)),
            Addr(addr) => out.in_json_quotes(json, |out| out.addr(addr)),
            Num(n) => out.num(n),
            Millis(d) => out.millis(d),
            Error(err) if json => out.quoted(&err.to_string()),
            Error(err) => write!(out, "{err}")?,
        }
    }
    if json {
        out.write_str(",\"target\":\"vestibule::access\"}\n")
    } else {
        out.write_char('\n')
    }
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

    fn line_of(f: impl FnOnce(&mut Line<'_>)) -> String {
        let mut buf = Vec::new();
        f(&mut Line(&mut buf));
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn pieces_are_written_as_core_fmt_would_write_them() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(line_of(|l| l.ip(ip)), ip.to_string());
        }
        for addr in ["127.0.9.4:60019", "10.0.0.1:1", "[2001:db8::7]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(line_of(|l| l.addr(addr)), addr.to_string());
        }
        for (us, text) in [
            (1_500, "1.5"),
            (341_227, "341.227"),
            (12_000, "12"),
            (1, "0.001"),
            (0, "0"),
            (1_010, "1.01"),
        ] {
            assert_eq!(line_of(|l| l.millis(Duration::from_micros(us))), text);
        }
        assert_eq!(line_of(|l| l.num(65_535u16)), "65535");
        assert_eq!(line_of(|l| l.quoted("plain")), "\"plain\"");
        assert_eq!(
            line_of(|l| l.quoted("a\"b\\c\u{1}")),
            "\"a\\\"b\\\\c\\u0001\""
        );
        // RFC 3339 in UTC with microseconds, the date made once a second.
        let mut stamp = Stamp::default();
        let t = line_of(|l| l.timestamp(&mut stamp));
        assert_eq!(t.len(), 27, "{t}");
        assert!(
            t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
            "{t}"
        );
        let year: u32 = t[..4].parse().unwrap();
        assert!((2024..3000).contains(&year), "{t}");
        // The cached date is the one of the second it was made for.
        let days = stamp.secs / 86_400;
        let (y, m, d) = civil(days);
        assert_eq!(
            &stamp.text[..10],
            format!("{y:04}-{m:02}-{d:02}").as_bytes()
        );
        assert_eq!(line_of(|l| l.padded(7, 6)), "000007");
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
        let waiting = log.waiting.lock().unwrap().lines.len();
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
