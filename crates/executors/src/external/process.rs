//! Running an external trainer (sd-scripts, ai-toolkit) as a child process:
//! both output streams read line by line as they come, a deadline, and
//! cancellation that stops the whole process group.
//!
//! The child leads its own process group because launchers fork:
//! `accelerate launch` runs the training in a child python process, and
//! data-loader workers are processes too; they would keep the GPU busy if
//! only the leader were killed. Stopping is SIGTERM to the group, a grace
//! period, then SIGKILL.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::error::{Error, Result};
use super::lines::{LineSplitter, is_exception, is_out_of_memory};

/// How many lines of output an error message quotes.
pub const TAIL_LINES: usize = 20;

/// After the script exits, how long to keep reading output that is still in
/// the pipes (or held open by a straggling grandchild).
const DRAIN: Duration = Duration::from_secs(3);

/// A command line to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptCommand {
    pub program: String,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub stop_grace: Duration,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(ExitStatus),
    /// Stopped because the step was cancelled.
    Cancelled,
    /// Stopped at the deadline.
    TimedOut,
}

/// What the process said that matters after it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    tail: VecDeque<String>,
    tail_is_bar: bool,
    /// The first line that reported CUDA out of memory.
    pub out_of_memory: Option<String>,
    /// The last Python exception line (`ImportError: ...`).
    pub exception: Option<String>,
}

impl Transcript {
    /// Record a line; `is_bar` says it is a redraw of the training progress
    /// bar. Consecutive redraws keep only the latest, so a traceback after a
    /// long progress bar still fits the tail.
    pub fn record(&mut self, line: &str, is_bar: bool) {
        if is_bar && self.tail_is_bar {
            self.tail.pop_back();
        }
        self.tail_is_bar = is_bar;
        self.tail.push_back(line.trim_end().to_owned());
        while self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
        if self.out_of_memory.is_none() && is_out_of_memory(line) {
            self.out_of_memory = Some(line.trim().to_owned());
        }
        let trimmed = line.trim();
        if is_exception(trimmed) {
            self.exception = Some(trimmed.to_owned());
        }
    }

    /// The last lines, one per line.
    pub fn tail(&self) -> String {
        self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

async fn pump(mut stream: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.push(&buf[..n], |l| lines.push(l)),
        }
        for line in lines.drain(..) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    splitter.finish(|l| lines.push(l));
    for line in lines {
        let _ = tx.send(line).await;
    }
}

/// Signal every process in the group the child leads. Takes the pid taken
/// at spawn: once the child is reaped, `Child::id` is gone.
#[cfg(unix)]
fn signal_group(pid: Option<u32>, signal: nix::sys::signal::Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // The group may be gone already; that is the goal, not an error.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Ask the process group to stop, then make it stop.
async fn stop(child: &mut Child, pid: Option<u32>, grace: Duration) {
    #[cfg(unix)]
    {
        signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        let exited = tokio::time::timeout(grace, child.wait()).await.is_ok();
        // Exited or not, nothing of the group may outlive the attempt.
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        if exited {
            return;
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, grace);
    let _ = child.kill().await;
}

/// Run `cmd`, passing every output line (stdout and stderr, split at `\r`
/// and `\n`) to `on_line` as it arrives, until it exits, `cancelled`
/// resolves, or the timeout passes.
pub async fn run_script(
    cmd: &ScriptCommand,
    cancelled: impl Future<Output = ()>,
    mut on_line: impl FnMut(&str),
) -> Result<Ended> {
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
        .envs(&cmd.env)
        // Python buffers stdout in blocks when it is a pipe; progress would
        // arrive in bursts, and be lost on a crash.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(|e| Error::LaunchFailed {
        program: cmd.program.clone(),
        message: e.to_string(),
    })?;
    let pid = child.id();

    let (tx, mut rx) = mpsc::channel::<String>(1024);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, tx.clone())));
    }
    drop(tx);

    let deadline = tokio::time::sleep(cmd.timeout);
    tokio::pin!(deadline);
    tokio::pin!(cancelled);
    let mut streams_open = true;
    let ended = loop {
        tokio::select! {
            biased;
            () = &mut cancelled => {
                stop(&mut child, pid, cmd.stop_grace).await;
                break Ended::Cancelled;
            }
            () = &mut deadline => {
                stop(&mut child, pid, cmd.stop_grace).await;
                break Ended::TimedOut;
            }
            line = rx.recv(), if streams_open => match line {
                Some(line) => on_line(&line),
                None => streams_open = false,
            },
            status = child.wait() => {
                let status = status.map_err(|e| Error::io(format!("waiting for {}", cmd.program), e))?;
                // Output written just before exit may still be in the pipes.
                let drain_until = tokio::time::Instant::now() + DRAIN;
                while streams_open {
                    match tokio::time::timeout_at(drain_until, rx.recv()).await {
                        Ok(Some(line)) => on_line(&line),
                        Ok(None) | Err(_) => streams_open = false,
                    }
                }
                break Ended::Exited(status);
            }
        }
    };
    // Whatever the leader left running in its group goes with it.
    #[cfg(unix)]
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    for reader in readers {
        reader.abort();
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_one_progress_bar_and_the_last_lines() {
        let mut t = Transcript::default();
        for line in [
            "steps:   1%|          | 1/180 [00:03<10:08,  3.40s/it]",
            "steps:   1%|          | 2/180 [00:03<05:46,  1.95s/it]",
            "Traceback (most recent call last):",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.",
        ] {
            t.record(line, line.starts_with("steps:"));
        }
        assert_eq!(
            t.tail(),
            "steps:   1%|          | 2/180 [00:03<05:46,  1.95s/it]\n\
             Traceback (most recent call last):\n\
             torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."
        );
        assert!(
            t.out_of_memory
                .as_deref()
                .unwrap()
                .starts_with("torch.OutOfMemoryError")
        );
        for i in 0..30 {
            let line = format!("line {i}");
            t.record(&line, false);
        }
        assert_eq!(t.tail().lines().count(), TAIL_LINES);
        assert!(t.tail().ends_with("line 29"));
    }
}
