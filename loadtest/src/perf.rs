//! Kernel trips of a target, counted with `perf stat` over a measured window:
//! syscalls (`raw_syscalls:sys_enter`) and io_uring submissions (one per SQE,
//! `io_uring:io_uring_submit_req`; `io_uring_submit_sqe` on older kernels).
//!
//! A [`Counter`] is one `perf stat -p PID,PID… -D -1 --control fifo:CTL,ACK`
//! process, started before the load with its events disabled (attaching takes
//! tens of ms); the window is opened and closed by writing `enable` and
//! `disable` to its control FIFO and waiting for its `ack`, so it counts the
//! same window as the `/proc` readings. SIGINT then makes it write its CSV.
//! `perf stat -p` counts every thread of each process, and (inherited) the
//! threads and children they start while it counts.
//!
//! Nothing here fails a run: every error is returned for the caller to show
//! as "-".

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The syscall tracepoint: every syscall entry of a counted thread.
const SYSCALLS: &str = "raw_syscalls:sys_enter";
/// io_uring submissions (one per SQE), newest name first.
const SQES: [&str; 2] = [
    "io_uring:io_uring_submit_req",
    "io_uring:io_uring_submit_sqe",
];

/// How long `perf` may take to attach and answer its first control command.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `enable`/`disable` may wait for its `ack`.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `perf` may take to write its counts after SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A working `perf` and the events it can count here.
pub struct Perf {
    bin: String,
    dir: PathBuf,
    cpu: Option<usize>,
    /// The io_uring submission tracepoint, when this kernel has one.
    sqe_event: Option<&'static str>,
    seq: AtomicU32,
}

/// Counts of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    pub syscalls: u64,
    /// None when this kernel has no io_uring submission tracepoint.
    pub sqes: Option<u64>,
}

impl Perf {
    /// Find out whether `bin` can count the events on a process of ours
    /// (`perf` installed, tracepoints present and permitted, `--control`
    /// supported) by counting this process for a moment. Its FIFOs and
    /// outputs go to `dir`; `perf` itself runs on `cpu`.
    pub fn probe(bin: &str, dir: &Path, cpu: Option<usize>) -> Result<Perf, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut perf = Perf {
            bin: bin.to_string(),
            dir: dir.to_path_buf(),
            cpu,
            sqe_event: None,
            seq: AtomicU32::new(0),
        };
        let me = std::process::id();
        let mut first_err = None;
        for sqe in SQES.iter().copied().map(Some).chain([None]) {
            perf.sqe_event = sqe;
            match perf.try_count(me) {
                Ok(c) if c.syscalls > 0 => return Ok(perf),
                Ok(_) => {
                    first_err.get_or_insert_with(|| format!("{SYSCALLS} counted nothing"));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_default())
    }

    /// Count `pid` over a few syscalls of our own.
    fn try_count(&self, pid: u32) -> Result<Counts, String> {
        let mut c = Counter::start(self, &[pid])?;
        c.enable();
        for _ in 0..10 {
            let _ = fs::metadata("/proc/self");
        }
        c.disable();
        c.finish()
    }

    /// The events counted, as given to `perf stat -e`.
    pub fn events(&self) -> Vec<&'static str> {
        let mut e = vec![SYSCALLS];
        e.extend(self.sqe_event);
        e
    }
}

/// One `perf stat` process counting some processes.
pub struct Counter {
    child: Child,
    ctl: File,
    ack: File,
    out: PathBuf,
    log: PathBuf,
    fifos: [PathBuf; 2],
    events: Vec<&'static str>,
    /// The first control command that failed.
    failed: Option<String>,
}

impl Counter {
    /// Start `perf stat` on `pids` (each with all its threads), events
    /// disabled; returns once it answers on its control FIFO.
    pub fn start(perf: &Perf, pids: &[u32]) -> Result<Counter, String> {
        let n = perf.seq.fetch_add(1, Ordering::Relaxed);
        let base = perf.dir.join(format!("perf-{n}"));
        let fifos = [base.with_extension("ctl"), base.with_extension("ack")];
        for f in &fifos {
            let _ = fs::remove_file(f);
            let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string())?;
            // SAFETY: mkfifo(3) on a NUL-terminated path we own.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(format!(
                    "mkfifo {}: {}",
                    f.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        // Read-write opens of a FIFO never block (Linux), on either side.
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let (ctl, ack) = (open(&fifos[0])?, open(&fifos[1])?);
        let out = base.with_extension("csv");
        let log = base.with_extension("log");
        let events = perf.events();
        let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut cmd = Command::new(&perf.bin);
        cmd.args(["stat", "-x", ",", "-D", "-1", "--control"])
            .arg(format!(
                "fifo:{},{}",
                fifos[0].display(),
                fifos[1].display()
            ))
            .arg("-o")
            .arg(&out)
            .args(["-e", &events.join(","), "-p", &pid_list.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?,
            ));
        crate::rt::child_pinned(&mut cmd, perf.cpu);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run `{}`: {e}", perf.bin))?;
        let mut c = Counter {
            child,
            ctl,
            ack,
            out,
            log,
            fifos,
            events,
            failed: None,
        };
        // Events start disabled; a `disable` is answered once perf has
        // attached to every thread and reads its control FIFO.
        c.command("disable", READY_TIMEOUT)
            .map_err(|e| c.explain(&e))?;
        Ok(c)
    }

    /// Start counting (returns once perf has enabled its events).
    pub fn enable(&mut self) {
        self.control("enable");
    }

    /// Stop counting.
    pub fn disable(&mut self) {
        self.control("disable");
    }

    fn control(&mut self, cmd: &str) {
        if self.failed.is_none()
            && let Err(e) = self.command(cmd, ACK_TIMEOUT)
        {
            self.failed = Some(e);
        }
    }

    /// Write `cmd` to perf's control FIFO and wait for its `ack`.
    fn command(&mut self, cmd: &str, timeout: Duration) -> Result<(), String> {
        self.ctl
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("perf control FIFO: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            if got.windows(4).any(|w| w == b"ack\n") {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("perf exited ({st}) before answering `{cmd}`"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("perf did not answer `{cmd}` within {timeout:?}"));
            }
            let mut pfd = libc::pollfd {
                fd: self.ack.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Wake up now and then to notice perf exiting.
            let ms = left.as_millis().min(50) as libc::c_int;
            // SAFETY: poll(2) on one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                let mut buf = [0u8; 64];
                match self.ack.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(format!("perf ack FIFO: {e}")),
                }
            }
        }
    }

    /// Stop perf (SIGINT makes it write its counts) and read them.
    pub fn finish(mut self) -> Result<Counts, String> {
        let failed = self.failed.take();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "perf did not exit within {EXIT_TIMEOUT:?} of SIGINT"
                    ));
                }
            }
        };
        if let Some(e) = failed {
            return Err(self.explain(&e));
        }
        let csv = fs::read_to_string(&self.out).unwrap_or_default();
        parse(&csv, &self.events).map_err(|e| self.explain(&format!("{e} (perf: {status})")))
    }

    /// `e` and what perf said about it.
    fn explain(&self, e: &str) -> String {
        let said = complaint(&fs::read_to_string(&self.log).unwrap_or_default());
        if said.is_empty() {
            e.to_string()
        } else {
            format!("{e}: {said}")
        }
    }
}

/// The gist of perf's stderr: its `Error:` lines, else its first lines
/// (never the usage text it appends, nor its "Events enabled" notes).
fn complaint(log: &str) -> String {
    let lines: Vec<String> = log
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("Run 'perf list'"))
        .filter(|l| !l.is_empty() && !l.starts_with("Events "))
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("Error:"))
        .map(String::as_str)
        .collect();
    if errors.is_empty() {
        lines
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ")
    } else {
        errors.join(" / ")
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for f in &self.fifos {
            let _ = fs::remove_file(f);
        }
        let _ = fs::remove_file(&self.out);
        let _ = fs::remove_file(&self.log);
    }
}

/// The counts of `perf stat -x,` output: `count,unit,event,time,pct,…`
/// lines (`<not counted>`: the event was enabled but no counted thread ran,
/// so 0; `<not supported>`: an error).
fn parse(csv: &str, events: &[&str]) -> Result<Counts, String> {
    let mut found: Vec<Option<u64>> = vec![None; events.len()];
    for line in csv.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Some(i) = events.iter().position(|&e| e == f[2]) else {
            continue;
        };
        let n = match f[0] {
            "<not counted>" => 0,
            v => match v.parse::<f64>() {
                Ok(x) if x >= 0.0 => x.round() as u64,
                _ => return Err(format!("{}: {v}", f[2])),
            },
        };
        found[i] = Some(found[i].unwrap_or(0) + n);
    }
    let get =
        |i: usize| found[i].ok_or_else(|| format!("no count of {} in perf's output", events[i]));
    Ok(Counts {
        syscalls: get(0)?,
        sqes: if events.len() > 1 {
            Some(get(1)?)
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: [&str; 2] = [SYSCALLS, "io_uring:io_uring_submit_req"];

    #[test]
    fn parses_perf_csv() {
        let csv = "# started on Sun Nov 29 12:33:23 2026\n\n\
                   22792,,raw_syscalls:sys_enter,228697911,100.00,,\n\
                   6000,,io_uring:io_uring_submit_req,228697911,100.00,,\n";
        assert_eq!(
            parse(csv, &EV),
            Ok(Counts {
                syscalls: 22792,
                sqes: Some(6000)
            })
        );
        let idle = "<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n\
                    <not counted>,,io_uring:io_uring_submit_req,0,100.00,,\n";
        assert_eq!(
            parse(idle, &EV),
            Ok(Counts {
                syscalls: 0,
                sqes: Some(0)
            })
        );
        assert_eq!(
            parse("5,,raw_syscalls:sys_enter,1,100.00,,\n", &EV[..1]),
            Ok(Counts {
                syscalls: 5,
                sqes: None
            })
        );
    }

    #[test]
    fn perf_complaints_are_short() {
        let denied = "event syntax error: 'raw_syscalls:sys_enter'\n                     \\___ can't access trace events\n\n\
                      Error:\tNo permissions to read /sys/kernel/tracing/events/raw_syscalls/sys_enter\n\
                      Hint:\tTry 'sudo mount -o remount,mode=755 /sys/kernel/tracing/'\n\n\
                      Run 'perf list' for a list of valid events\n\n Usage: perf stat [<options>] [<command>]\n";
        assert_eq!(
            complaint(denied),
            "Error: No permissions to read /sys/kernel/tracing/events/raw_syscalls/sys_enter"
        );
        let gone = "Problems finding threads of monitor\n\n Usage: perf stat [<options>] [<command>]\n\n    -p, --pid <pid>\n";
        assert_eq!(complaint(gone), "Problems finding threads of monitor");
        assert_eq!(complaint("Events disabled\n"), "");
    }

    #[test]
    fn unusable_output_is_an_error() {
        assert!(parse("", &EV).is_err());
        assert!(parse("<not supported>,,raw_syscalls:sys_enter,0,0,,\n", &EV).is_err());
        assert!(parse("5,,raw_syscalls:sys_enter,1,100.00,,\n", &EV).is_err());
    }
}
