//! What a push prints on stderr: on a terminal one status line redrawn in place, showing every
//! blob being uploaded (several are at once), otherwise one plain line per blob. Only digests,
//! sizes and rates are printed, never blob bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Progress {
    tty: bool,
    board: Arc<Mutex<Board>>,
}

/// The blobs being uploaded, by bar id: what the terminal's status line shows.
#[derive(Debug, Default)]
struct Board {
    next_id: u64,
    active: BTreeMap<u64, (String, u64, u64, f64)>,
    drawn: Option<Instant>,
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

fn bar(pos: u64, size: u64, width: usize) -> String {
    let frac = if size == 0 {
        1.0
    } else {
        pos as f64 / size as f64
    };
    let filled = ((frac * width as f64) as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

impl Board {
    /// The status line: one blob with a full bar, several with a short bar each.
    fn status(&self) -> String {
        let one = self.active.len() == 1;
        self.active
            .values()
            .map(|(digest, pos, size, rate)| {
                if one {
                    format!(
                        "{} {} {} / {} {rate:.1} MiB/s",
                        short(digest),
                        bar(*pos, *size, BAR_WIDTH),
                        human(*pos),
                        human(*size)
                    )
                } else {
                    format!("{} {}", short(digest), bar(*pos, *size, 10))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    }

    fn draw(&mut self, err: &mut impl Write) {
        let _ = write!(err, "\r\x1b[2K{}", self.status());
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }
}

impl Progress {
    pub fn new(tty: bool) -> Progress {
        Progress {
            tty,
            board: Arc::default(),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A message on a line of its own (the status line is drawn again below it).
    pub fn line(&self, msg: &str) {
        let mut board = self.board();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{msg}");
        if self.tty && !board.active.is_empty() {
            board.draw(&mut err);
        }
    }

    pub fn blob(&self, digest: &str, size: u64) -> BlobBar {
        let mut board = self.board();
        let id = board.next_id;
        board.next_id += 1;
        board.active.insert(id, (digest.to_string(), 0, size, 0.0));
        BlobBar {
            progress: self.clone(),
            id,
            digest: digest.to_string(),
            size,
            pos: 0,
            sent: 0,
            started: Instant::now(),
        }
    }
}

pub struct BlobBar {
    progress: Progress,
    id: u64,
    digest: String,
    size: u64,
    pos: u64,
    sent: u64,
    started: Instant,
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
        let rate = self.rate();
        let mut board = self.progress.board();
        if let Some(entry) = board.active.get_mut(&self.id) {
            entry.1 = pos;
            entry.3 = rate;
        }
        if self.progress.tty
            && board
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            board.draw(&mut std::io::stderr().lock());
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.sent as f64 / MIB / secs
    }

    /// Ends the blob's line with `outcome` (`uploaded`, `exists`, ...).
    pub fn finish(self, outcome: &str) {
        let mut board = self.progress.board();
        board.active.remove(&self.id);
        let mut err = std::io::stderr().lock();
        if self.progress.tty {
            let _ = writeln!(
                err,
                "\r\x1b[2K{} {} {} {outcome}",
                short(&self.digest),
                bar(self.pos, self.size, BAR_WIDTH),
                human(self.size)
            );
            if !board.active.is_empty() {
                board.draw(&mut err);
            }
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
                err,
                "{outcome} {} ({}{detail})",
                self.digest,
                human(self.size)
            );
        }
    }
}

impl Drop for BlobBar {
    /// A bar dropped without `finish` (its blob failed) leaves the status line.
    fn drop(&mut self) {
        self.progress.board().active.remove(&self.id);
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
    fn the_status_line_shows_every_blob_under_way() {
        let p = Progress::new(false);
        let mut a = p.blob("sha256:aaaaaaaaaaaaaaaa", 100);
        a.update(50, 50);
        assert!(
            p.board()
                .status()
                .starts_with("sha256:aaaaaaaaaaaa [###############---------------] 50 B / 100 B")
        );
        let b = p.blob("sha256:bbbbbbbbbbbbbbbb", 10);
        assert_eq!(
            p.board().status(),
            "sha256:aaaaaaaaaaaa [#####-----]  sha256:bbbbbbbbbbbb [----------]"
        );
        a.finish("uploaded");
        drop(b);
        assert_eq!(p.board().status(), "");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(52), "52 B");
        assert_eq!(human(2048), "2.0 KiB");
        assert_eq!(human(3 * 1024 * 1024), "3.0 MiB");
    }
}
