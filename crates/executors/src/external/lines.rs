//! Reading an external trainer's console output, whatever the trainer:
//! splitting the byte stream into lines (tqdm redraws with `\r`), tqdm's
//! progress-bar format, Python exceptions, and CUDA running out of memory.
//!
//! The progress bar is tqdm's default format (tqdm/std.py `format_meter`):
//! `'{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]'`,
//! where `rate_fmt` is `'{0:5.2f}'.format(rate) + 'it/s'`, or
//! `'{0:5.2f}'.format(1 / rate) + 's/it'` when a step takes more than a
//! second, or `'?it/s'` before the first step, and the postfix is
//! `', ' + postfix` when one is set.
//!
//! Out-of-memory is PyTorch's message (c10/cuda/CUDACachingAllocator.cpp:
//! `"CUDA out of memory. Tried to allocate "`, raised as
//! `torch.OutOfMemoryError`, formerly `torch.cuda.OutOfMemoryError`) or the
//! CUDA runtime's `"CUDA error: out of memory"`, or ai-toolkit's own
//! (`BaseSDTrainProcess`: `"OOM during training step 3 times in a row,
//! aborting training"` after it skipped batches that ran out).

/// Whether `line` reports CUDA running out of memory.
pub fn is_out_of_memory(line: &str) -> bool {
    line.contains("CUDA out of memory")
        || line.contains("OutOfMemoryError")
        || line.contains("CUDA error: out of memory")
        || line.contains("OOM during training step")
}

/// Whether `line` is the last line of a Python traceback
/// (`ImportError: No bitsandbytes ...`), to quote in error messages.
pub fn is_exception(line: &str) -> bool {
    let Some((name, _)) = line.split_once(": ") else {
        return false;
    };
    !name.is_empty()
        && !name.starts_with(' ')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && (name.ends_with("Error") || name.ends_with("Exception") || name.ends_with("Interrupt"))
}

/// One redraw of a tqdm progress bar.
#[derive(Debug, Clone, PartialEq)]
pub struct TqdmLine<'a> {
    /// The bar's description (`steps`, `Generating Images`, a job name).
    pub desc: &'a str,
    pub n: u64,
    pub total: u64,
    /// Iterations per second; `None` before the first one.
    pub rate: Option<f64>,
    /// What `set_postfix`/`set_postfix_str` added after the rate, if anything.
    pub postfix: &'a str,
}

/// `steps:  34%|███▍      | 61/180 [00:31<01:01,  1.93it/s, avr_loss=0.121]`
pub fn parse_tqdm(line: &str) -> Option<TqdmLine<'_>> {
    let line = line.trim();
    let (desc, rest) = line.split_once(": ")?;
    // The percentage leads, then the bar; the counters follow its last "| ".
    let (percent, _) = rest.split_once("%|")?;
    percent.trim().parse::<u32>().ok()?;
    let (bar, stats) = rest.split_once(" [")?;
    let counts = bar.rsplit_once("| ")?.1;
    let (n, total) = counts.trim().split_once('/')?;
    let n: u64 = n.parse().ok()?;
    let total: u64 = total.parse().ok()?;
    let stats = stats.trim_end().strip_suffix(']')?;
    let (_elapsed_remaining, after) = stats.split_once(", ")?;
    let (rate, postfix) = after.split_once(", ").unwrap_or((after, ""));
    let rate = rate.trim();
    let rate = if let Some(v) = rate.strip_suffix("it/s") {
        v.trim().parse::<f64>().ok()
    } else if let Some(v) = rate.strip_suffix("s/it") {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0)
            .map(|s| 1.0 / s)
    } else {
        None
    };
    Some(TqdmLine {
        desc,
        n,
        total,
        rate,
        postfix,
    })
}

/// Splits a byte stream into lines at `\n` and at tqdm's `\r`, dropping
/// empty ones. Bytes that are not UTF-8 are replaced, never fatal.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

/// A line longer than this is cut: a runaway line must not grow memory
/// without bound.
const MAX_LINE: usize = 64 * 1024;

impl LineSplitter {
    /// Feed bytes; complete lines are passed to `emit`.
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                self.flush(&mut emit);
            } else if self.pending.len() < MAX_LINE {
                self.pending.push(b);
            }
        }
    }

    /// The rest, at end of stream.
    pub fn finish(&mut self, mut emit: impl FnMut(String)) {
        self.flush(&mut emit);
    }

    fn flush(&mut self, emit: &mut impl FnMut(String)) {
        if !self.pending.is_empty() {
            let line = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            if !line.trim().is_empty() {
                emit(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_carriage_returns_and_newlines() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.push(b"a\rb\r\nc", |l| lines.push(l));
        s.push(b"d\n\n  \r", |l| lines.push(l));
        s.push(b"e", |l| lines.push(l));
        s.finish(|l| lines.push(l));
        assert_eq!(lines, ["a", "b", "cd", "e"]);
    }

    #[test]
    fn reads_bars_with_and_without_a_postfix() {
        let bar = parse_tqdm(
            "corgi:  12%|█▏        | 120/1000 [01:02<07:35,  1.93it/s, lr: 1.0e-04 loss: 4.123e-01]",
        )
        .unwrap();
        assert_eq!((bar.desc, bar.n, bar.total), ("corgi", 120, 1000));
        assert_eq!(bar.rate, Some(1.93));
        assert_eq!(bar.postfix, "lr: 1.0e-04 loss: 4.123e-01");
        let first = parse_tqdm("steps:   0%|          | 0/180 [00:00<?, ?it/s]").unwrap();
        assert_eq!((first.n, first.rate, first.postfix), (0, None, ""));
        let slow = parse_tqdm("steps:   1%|          | 1/180 [00:03<10:08,  3.40s/it]").unwrap();
        assert!((slow.rate.unwrap() - 1.0 / 3.4).abs() < 1e-9);
        assert_eq!(parse_tqdm("epoch: 3/10"), None);
        assert_eq!(parse_tqdm("Saving at step 20"), None);
    }

    #[test]
    fn python_exception_lines_are_recognised() {
        assert!(is_exception("ImportError: No bitsandbytes"));
        assert!(is_exception("torch.OutOfMemoryError: CUDA out of memory."));
        assert!(!is_exception("  File \"x.py\", line 3, in <module>"));
        assert!(!is_exception("saving checkpoint: /x"));
    }
}
