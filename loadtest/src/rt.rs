//! Runtime plumbing shared by the subcommands: one monoio runtime per thread
//! (io_uring, the epoll driver where io_uring is unavailable), CPU pinning,
//! the open-files limit, and a precise periodic ticker.
//!
//! monoio's timer wheel has a resolution of one millisecond, far too coarse to
//! schedule an open-loop load at microsecond precision. The ticker therefore
//! waits on a `timerfd` (an hrtimer): it wakes the runtime at the tick and
//! says how many ticks elapsed.

use std::io;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver};

pub type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// A runtime for the current thread: io_uring when the kernel allows it,
/// the epoll driver otherwise or when `LOADTEST_DRIVER=legacy`.
pub fn runtime() -> io::Result<Runtime> {
    if force_legacy() {
        let rt = monoio::RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()?;
        return Ok(rt.into());
    }
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(8192)
        .enable_timer()
        .build()
}

fn force_legacy() -> bool {
    std::env::var("LOADTEST_DRIVER").is_ok_and(|v| v == "legacy")
}

/// Whether the runtimes built here use io_uring.
pub fn uring() -> bool {
    !force_legacy() && monoio::utils::detect_uring()
}

/// Pin the calling thread (and the threads it spawns later) to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin_pid(0, cpu)
}

/// Pin a process or thread (`0`: the caller) to one CPU.
pub fn pin_pid(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within its bounds
    // (checked against CPU_SETSIZE first).
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu index too large",
            ));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: plain data in and out of sched_getaffinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Make the child that `cmd` starts die with this process (SIGKILL on the
/// parent's exit) and, with `cpu`, run pinned to that CPU.
pub fn child_pinned(cmd: &mut std::process::Command, cpu: Option<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
}

/// Raise the soft open-files limit to the hard limit (thousands of
/// connections need thousands of descriptors).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Ticks every `period` from `start` (tick k is due at `start + k * period`);
/// `next().await` returns how many ticks have become due since the last call.
///
/// A non-blocking `timerfd` (an hrtimer, nanosecond resolution) wrapped so
/// monoio can wait for it: monoio has no public "poll this fd" API, but
/// `TcpStream::from_std` only wraps the descriptor and `readable()` issues an
/// io_uring `POLL_ADD` (epoll readiness on the legacy driver); nothing
/// socket-specific is ever called on it. Where no timerfd can be made, the
/// millisecond timer is used.
pub struct Ticker {
    fd: Option<(monoio::net::TcpStream, libc::c_int)>,
    start: Instant,
    period: Duration,
    seen: u64,
}

impl Ticker {
    pub fn new(start: Instant, period: Duration) -> Ticker {
        let period = period.max(Duration::from_nanos(1));
        Ticker {
            fd: timerfd(start, period).ok(),
            start,
            period,
            seen: 0,
        }
    }

    /// Wait for the next tick; returns the number of ticks elapsed.
    pub async fn next(&mut self) -> io::Result<u64> {
        match &self.fd {
            Some((stream, fd)) => loop {
                stream.readable(false).await?;
                let mut count: u64 = 0;
                // SAFETY: reading 8 bytes into a u64 from our timerfd.
                let n = unsafe { libc::read(*fd, (&raw mut count).cast(), 8) };
                if n == 8 && count > 0 {
                    self.seen += count;
                    return Ok(count);
                }
                let e = io::Error::last_os_error();
                if n < 0
                    && e.kind() != io::ErrorKind::WouldBlock
                    && e.kind() != io::ErrorKind::Interrupted
                {
                    return Err(e);
                }
            },
            None => {
                let next = self.start + self.period.mul_f64(self.seen as f64);
                let now = Instant::now();
                if next > now {
                    monoio::time::sleep(next - now).await;
                }
                let elapsed = Instant::now().saturating_duration_since(self.start);
                let total = (elapsed.as_nanos() / self.period.as_nanos().max(1)) as u64 + 1;
                let count = total.saturating_sub(self.seen).max(1);
                self.seen += count;
                Ok(count)
            }
        }
    }
}

fn timerfd(start: Instant, period: Duration) -> io::Result<(monoio::net::TcpStream, libc::c_int)> {
    // SAFETY: timerfd_create returns a fresh descriptor, owned below.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a valid descriptor we own; the wrapper closes it on drop.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let first = start
        .saturating_duration_since(Instant::now())
        .max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: timespec(period),
        it_value: timespec(first),
    };
    // SAFETY: fd is a timerfd; spec is a valid itimerspec.
    if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((monoio::net::TcpStream::from_std(std)?, fd))
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// Yield to the runtime once (it reaps IO completions before polling again).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Busy threads at `SCHED_IDLE` priority, one per CPU, until dropped: they
/// run only when nothing else wants the CPU, and keep a virtual CPU from
/// halting (waking a halted vCPU costs tens of µs per hop).
pub struct KeepAwake {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl KeepAwake {
    pub fn start(cpus: &[usize]) -> KeepAwake {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = cpus
            .iter()
            .map(|&cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let _ = pin_current_thread(cpu);
                    // SAFETY: sched_setscheduler on the calling thread with a valid param.
                    unsafe {
                        let param = libc::sched_param { sched_priority: 0 };
                        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        KeepAwake { stop, threads }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
