//! Where commands run: the host's network namespace or a named one (`ip netns`). Both
//! `nft` and `ip` go through here, so tests and benchmarks run the same code inside a
//! namespace they created and never touch the host's ruleset or routes.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::Error;

/// A network namespace to run `nft`, `ip` and `sysctl`-like commands in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetNs {
    name: Option<String>,
}

impl NetNs {
    /// The namespace of the calling process (production).
    pub fn host() -> Self {
        Self { name: None }
    }

    /// A named namespace from `ip netns add <name>` (tests, benchmarks).
    pub fn named(name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
        }
    }

    /// The namespace name, `None` for the host's.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// A command that runs `program` in this namespace (`nsenter --net` for a named one:
    /// it only switches the network namespace, so it costs less than `ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        match &self.name {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(program);
                c
            }
        }
    }

    /// Runs `program args…`, feeding `stdin` if given; returns stdout or the failure
    /// with stderr.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, Error> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| Error::Spawn {
            program: program.to_owned(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Failed {
                command: format!("{program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Writes a sysctl (`net.ipv4.ip_forward` style key) in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(
            "sh",
            &["-c", "printf '%s' \"$1\" > \"$2\"", "sh", value, &path],
            None,
        )
        .map(drop)
    }

    /// Reads a sysctl in this namespace; `None` if the key does not exist here.
    pub fn read_sysctl(&self, key: &str) -> Option<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run("cat", &[&path], None)
            .ok()
            .map(|s| s.trim().to_owned())
    }
}
