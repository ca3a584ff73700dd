//! An optional whole-machine CPU profile of one benchmark phase (`BENCH_PROFILE=1`, needs
//! `perf`): where the cores went, split by process and by what the time was spent on.
//!
//! Its point is the SSE rows. The clients of that benchmark run on the server's own two cores,
//! over loopback, and on loopback the kernel does the *receiving* side of every packet (TCP
//! receive, waking the reader) inside the sender's `send` call, on the sender's time. A profile
//! tells that part apart, because its stacks run through the network receive softirq
//! (`net_rx_action`): on a real network the receiving machine does it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A `perf record` of the whole machine, running until [`Recording::finish`].
pub struct Recording {
    perf: Child,
    file: PathBuf,
}

/// Where one process's sampled time went, as fractions of the whole machine's samples.
#[derive(Clone, Copy, Default, Debug)]
pub struct Share {
    /// All of it.
    pub total: f64,
    /// In user space (the program itself, its libraries).
    pub user: f64,
    /// In the kernel, receiving packets (stacks through `net_rx_action`): on loopback, the
    /// other end's receive path run on this process's time.
    pub receive: f64,
    /// In the kernel, anything else (its own syscalls, scheduling, sending).
    pub kernel: f64,
}

impl Share {
    pub fn json(&self) -> Value {
        json!({"total": self.total, "user": self.user, "kernel_receive": self.receive,
               "kernel_other": self.kernel})
    }
}

/// A phase's profile: the server's and the clients' share of the machine, and how much of it
/// was idle.
#[derive(Debug)]
pub struct Breakdown {
    pub server: Share,
    pub clients: Share,
    pub idle: f64,
    pub samples: usize,
}

impl Breakdown {
    pub fn json(&self) -> Value {
        json!({"server": self.server.json(), "clients": self.clients.json(),
               "idle": self.idle, "samples": self.samples})
    }
}

/// Starts recording if `BENCH_PROFILE` is set and `perf` can sample the machine; says why not
/// otherwise.
pub fn start(phase: &str) -> Option<Recording> {
    std::env::var_os("BENCH_PROFILE")?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).ok()?;
    let file = dir.join(format!("{phase}.perf.data"));
    let _ = std::fs::remove_file(&file);
    // cpu-clock (a software timer) samples on virtual machines without hardware counters too.
    let perf = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-a", "-g", "-o"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut perf = match perf {
        Ok(perf) => perf,
        Err(e) => {
            println!("  (no profile: cannot run perf: {e})");
            return None;
        }
    };
    // perf writes its file's header once it is sampling.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        if Instant::now() > deadline || perf.try_wait().ok().flatten().is_some() {
            println!("  (no profile: perf record did not start)");
            let _ = perf.kill();
            let _ = perf.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Recording { perf, file })
}

impl Recording {
    /// Stops recording and splits the samples between `server` (a pid), this process (the
    /// clients) and idle.
    pub fn finish(mut self, server: u32) -> Option<Breakdown> {
        // SIGINT makes perf finish its file; SIGKILL would leave it unreadable.
        let _ = Command::new("kill")
            .args(["-INT", &self.perf.id().to_string()])
            .status();
        let _ = self.perf.wait();
        let script = Command::new("perf")
            .args(["script", "-F", "pid,ip,sym", "-i"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&script.stdout);
        Some(breakdown(&text, server, std::process::id()))
    }
}

/// Classifies each sample of `perf script -F pid,ip,sym` output (a `pid/tid` line, then its
/// stack, innermost frame first, then a blank line).
fn breakdown(script: &str, server: u32, clients: u32) -> Breakdown {
    let (mut server_share, mut client_share) = (Share::default(), Share::default());
    let (mut idle, mut samples) = (0usize, 0usize);
    for sample in script.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(head) = lines.next() else { continue };
        let pid: u32 = head
            .split_whitespace()
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(u32::MAX);
        let frames: Vec<&str> = lines.map(str::trim).collect();
        samples += 1;
        if pid == 0 {
            idle += 1;
            continue;
        }
        let share = if pid == server {
            &mut server_share
        } else if pid == clients {
            &mut client_share
        } else {
            continue;
        };
        share.total += 1.0;
        // Kernel addresses are in the top half of the address space.
        let in_kernel = frames
            .first()
            .and_then(|f| f.split_whitespace().next())
            .and_then(|ip| u64::from_str_radix(ip, 16).ok())
            .is_some_and(|ip| ip >= 0xffff_8000_0000_0000);
        if !in_kernel {
            share.user += 1.0;
        } else if frames.iter().any(|f| f.ends_with(" net_rx_action")) {
            share.receive += 1.0;
        } else {
            share.kernel += 1.0;
        }
    }
    let of_all = |s: Share| {
        let n = samples.max(1) as f64;
        Share {
            total: s.total / n,
            user: s.user / n,
            receive: s.receive / n,
            kernel: s.kernel / n,
        }
    };
    Breakdown {
        server: of_all(server_share),
        clients: of_all(client_share),
        idle: idle as f64 / samples.max(1) as f64,
        samples,
    }
}
