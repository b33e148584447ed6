//! What a push prints on stderr: a bar per blob redrawn in place on a terminal, otherwise one
//! plain line per blob. Only digests, sizes and rates are printed, never blob bytes.

use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    tty: bool,
}

const MIB: f64 = 1024.0 * 1024.0;
const BAR_WIDTH: usize = 30;

pub fn human(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// `sha256:0123456789ab`, enough to tell blobs apart on a line.
pub fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    &digest[..end.min(digest.len())]
}

impl Progress {
    pub fn new(tty: bool) -> Progress {
        Progress { tty }
    }

    /// A message on a line of its own.
    pub fn line(&self, msg: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{msg}");
    }

    pub fn blob(&self, digest: &str, size: u64) -> BlobBar {
        BlobBar {
            tty: self.tty,
            digest: digest.to_string(),
            size,
            pos: 0,
            sent: 0,
            started: Instant::now(),
            drawn: None,
        }
    }
}

pub struct BlobBar {
    tty: bool,
    digest: String,
    size: u64,
    pos: u64,
    sent: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl BlobBar {
    /// Bytes this run sent (a resumed upload's earlier bytes are not counted in the rate).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// `pos` bytes of the blob are on the server; `sent` of them went out in this run.
    pub fn update(&mut self, pos: u64, newly_sent: u64) {
        self.pos = pos;
        self.sent += newly_sent;
        if self.tty
            && self
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            self.draw();
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.sent as f64 / MIB / secs
    }

    fn draw(&mut self) {
        let frac = if self.size == 0 {
            1.0
        } else {
            self.pos as f64 / self.size as f64
        };
        let filled = ((frac * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} [{}{}] {} / {} {:.1} MiB/s",
            short(&self.digest),
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            human(self.pos),
            human(self.size),
            self.rate()
        );
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Ends the blob's line with `outcome` (`uploaded`, `exists`, ...).
    pub fn finish(mut self, outcome: &str) {
        if self.tty {
            self.draw();
            let _ = writeln!(std::io::stderr().lock(), " {outcome}");
        } else {
            let detail = if self.sent > 0 {
                format!(
                    ", {} sent in {:.1} s ({:.1} MiB/s)",
                    human(self.sent),
                    self.started.elapsed().as_secs_f64(),
                    self.rate()
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                std::io::stderr().lock(),
                "{outcome} {} ({}{detail})",
                self.digest,
                human(self.size)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keeps_the_algorithm_and_twelve_hex_digits() {
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab");
        assert_eq!(short("sha256:01"), "sha256:01");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(52), "52 B");
        assert_eq!(human(2048), "2.0 KiB");
        assert_eq!(human(3 * 1024 * 1024), "3.0 MiB");
    }
}
