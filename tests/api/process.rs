//! Running the real `switchboard` binary: start it, read its output, stop it.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The binary, in `dir`, with no inherited Switchboard settings.
pub fn switchboard(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHBOARD_") || key == "DATABASE_URL" || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
}

/// What a finished process left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `command` to completion, failing the test if it takes longer than `limit`.
pub fn run_within(mut command: Command, limit: Duration) -> Finished {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let status = wait_within(&mut child, limit);
    let output = child.wait_with_output().expect("output is readable");
    Finished {
        status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Waits for `child` to exit, killing it and failing the test after `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("the child can be polled") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A server process whose stdout lines arrive on a channel.
pub struct Server {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// Every line read so far by [`Server::wait_for_line`].
    pub seen: Vec<String>,
    pub http_addr: String,
    pub grpc_addr: String,
}

impl Server {
    /// Starts `command` and waits until it logs both listening addresses.
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            seen: Vec::new(),
            http_addr: String::new(),
            grpc_addr: String::new(),
        };
        server.http_addr = server.wait_for_address("listening on http://");
        server.grpc_addr = server.wait_for_address("listening on grpc://");
        server
    }

    fn wait_for_address(&mut self, marker: &str) -> String {
        let line = self.wait_for_line(|line| line.contains(marker));
        let rest = &line[line.find(marker).unwrap() + marker.len()..];
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap()
            .to_owned()
    }

    /// Waits (up to 20 s) for a stdout line matching `pred` and returns it.
    pub fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("the server never printed the expected line");
                }
            }
        }
    }

    /// Sends a Unix signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
