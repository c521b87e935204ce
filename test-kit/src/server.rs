//! Servers the tests and benchmarks talk to (the fake IMDS, imds-load's echo server), and
//! running short commands with their command line in any error.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::{Error, Netns};

/// How long a server may take to print `listening`.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A server that prints `listening` once bound; killed on drop.
pub struct Server {
    child: Child,
    pub command: String,
}

impl Server {
    /// `fake-imds` (at `program`) in `ns` on both IMDS addresses and `extra_listen`, with
    /// tokens `mode` (`optional`, `required`).
    pub fn fake_imds(
        program: &Path,
        ns: &Netns,
        mode: &str,
        extra_listen: &[&str],
    ) -> Result<Self, Error> {
        let mut command = ns.command(program);
        command.args(["--mode", mode]);
        for listen in ["169.254.169.254:80", "[fd00:ec2::254]:80"]
            .iter()
            .chain(extra_listen)
        {
            command.args(["--listen", listen]);
        }
        Self::start(command)
    }

    /// Starts `command` and waits until it says `listening`.
    pub fn start(mut command: Command) -> Result<Self, Error> {
        let mut child = spawn(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let server = Self {
            child,
            command: display(&command),
        };
        match rx.recv_timeout(START_DEADLINE) {
            Ok(line) if line.trim() == "listening" => Ok(server),
            said => Err(Error::ServerNotListening {
                command: server.command.clone(),
                said: said.unwrap_or_default(),
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shell-like rendering of a command, with the environment overrides that matter to a reader.
pub fn display(command: &Command) -> String {
    let mut parts: Vec<String> = command
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_str()?, value?.to_string_lossy())))
        .collect();
    parts.push(command.get_program().to_string_lossy().into_owned());
    parts.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    parts.join(" ")
}

/// Starts `command`; an error names it.
pub(crate) fn spawn(command: &mut Command) -> Result<Child, Error> {
    command.spawn().map_err(|source| Error::Spawn {
        command: display(command),
        source,
    })
}

/// Runs `command` silently and returns its stdout; on failure the error carries its stderr.
pub fn output(command: &mut Command) -> Result<String, Error> {
    let out = spawn(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?
    .wait_with_output()
    .map_err(Error::io(format!("waiting for `{}`", display(command))))?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: display(command),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
