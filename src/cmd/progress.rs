//! Progress of long CLI work (`publish --count`, `dlq redrive`, `notify drop`): a bar with rate
//! and ETA when stderr is a terminal; otherwise a plain line every few seconds (and one at the
//! end), so a log of a piped or CI run shows how far it got without escape codes.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the plain lines come.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// What is counted.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Bytes,
    /// Items named by the word (`events`, `messages`).
    Items(&'static str),
}

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    /// What is being done (`uploading`, `publishing`, `redriving`).
    what: &'static str,
    unit: Unit,
    done: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(total: u64, what: &'static str, unit: Unit) -> Self {
        let terminal = std::io::stderr().is_terminal();
        Self::with_bar(total, what, unit, terminal)
    }

    fn with_bar(total: u64, what: &'static str, unit: Unit, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let template = match unit {
                Unit::Bytes => {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}".to_owned()
                }
                Unit::Items(name) => {
                    format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {name} {{per_sec}} eta {{eta}}")
                }
            };
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(what);
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            what,
            unit,
            done: AtomicU64::new(0),
            started: now,
            last_line: Mutex::new(now),
        }
    }

    pub fn advance(&self, by: u64) {
        let done = self.done.fetch_add(by, Ordering::Relaxed) + by;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    eprintln!("{}", self.line(done, self.started.elapsed()));
                    *last = Instant::now();
                }
            }
        }
    }

    /// A line of its own (a message that failed), above the bar when there is one.
    pub fn note(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None => eprintln!("{}", line.as_ref()),
        }
    }

    /// Clears the bar; without one, says where it ended.
    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => {
                let done = self.done.load(Ordering::Relaxed);
                if done > 0 {
                    eprintln!("{}", self.line(done, self.started.elapsed()));
                }
            }
        }
    }

    /// `publishing 300/1000 events, 120/s, eta 6s`.
    fn line(&self, done: u64, elapsed: Duration) -> String {
        let per_sec = done as f64 / elapsed.as_secs_f64().max(1e-3);
        let left = self.total.saturating_sub(done);
        let eta = if left == 0 {
            String::new()
        } else if per_sec > 0.0 {
            format!(", eta {}s", (left as f64 / per_sec).ceil() as u64)
        } else {
            ", eta unknown".to_owned()
        };
        match self.unit {
            Unit::Bytes => format!(
                "{} {done}/{} bytes, {:.0} bytes/s{eta}",
                self.what, self.total, per_sec
            ),
            Unit::Items(name) => format!(
                "{} {done}/{} {name}, {per_sec:.0}/s{eta}",
                self.what, self.total
            ),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A bar left on screen by an early return (an error) would be overwritten by the
        // error line; clear it.
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_give_count_rate_and_eta() {
        let p = Progress::with_bar(1000, "publishing", Unit::Items("events"), false);
        assert_eq!(
            p.line(300, Duration::from_secs(3)),
            "publishing 300/1000 events, 100/s, eta 7s"
        );
        assert_eq!(
            p.line(1000, Duration::from_secs(4)),
            "publishing 1000/1000 events, 250/s"
        );
        let p = Progress::with_bar(4096, "uploading", Unit::Bytes, false);
        assert_eq!(
            p.line(1024, Duration::from_secs(1)),
            "uploading 1024/4096 bytes, 1024 bytes/s, eta 3s"
        );
        assert_eq!(
            p.line(0, Duration::from_secs(1)),
            "uploading 0/4096 bytes, 0 bytes/s, eta unknown"
        );
    }
}
