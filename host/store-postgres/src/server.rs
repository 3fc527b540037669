//! A throwaway PostgreSQL server for tests (feature `test-server`): `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port with its socket in that directory, and
//! `pg_ctl stop` (immediate) when dropped. PostgreSQL refuses to run as root, so as root the
//! server runs as the `postgres` user, which then owns the directory. Debian's binaries are
//! found under `/usr/lib/postgresql/<version>/bin`, else on the `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// See the module docs.
pub struct TestServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_default()
}

fn as_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl TestServer {
    /// Starts a server; panics with what went wrong (a test cannot go on without one).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("payflow-pg").tempdir().expect("a temporary directory");
        let bin = bin_dir();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if as_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(
                ok.is_ok_and(|s| s.success()),
                "cannot give {} to the postgres user",
                dir.path().display()
            );
        }
        let server = TestServer { dir, bin, port };
        let data = server.data();
        // A language's collation, as most servers have, not the environment's (often C.UTF-8,
        // which compares as bytes do): what depends on the database's collation is then tested
        // where it differs. ICU's, so no system locale needs to be installed (PostgreSQL 15+).
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "payflow",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale-provider=icu",
                "--icu-locale=en-US",
                "--no-sync",
            ],
        );
        let options =
            format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on", server.dir.path().display());
        let log = server.dir.path().join("log").display().to_string();
        server.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-w", "start"]);
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A PostgreSQL program's path (found on `PATH` when no bin directory was found).
    fn program(&self, name: &str) -> PathBuf {
        if self.bin.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            self.bin.join(name)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.program(program);
        let mut command = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).current_dir(self.dir.path()).output().unwrap_or_else(|e| {
            panic!("cannot run {} (install PostgreSQL: scripts/setup.sh): {e}", path.display())
        });
        assert!(
            out.status.success() || program == "pg_ctl" && args.contains(&"stop"),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A new, empty database on this server, as a `postgres://` URL.
    pub fn database(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""));
        format!("postgres://payflow@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `statement` on `database` from a client of its own, as an operator's `psql` would:
    /// its rows, one per line, columns separated by `|`.
    pub fn sql(&self, database: &str, statement: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "payflow", "-d", database, "-Atc"])
            .arg(statement)
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "{statement} on {database}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server at once (as a crash would), keeping its data.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]);
    }

    /// For a server that is never dropped (one shared by a whole test binary): a watcher
    /// process stops it and removes its directory once this process has exited.
    pub fn stop_when_this_process_exits(&self) {
        let pg_ctl = self.program("pg_ctl");
        let as_postgres = if as_root() { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {as_postgres}'{pg_ctl}' -D '{data}' -m immediate -w stop; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data(),
            dir = self.dir.path().display(),
        );
        let watcher = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = watcher {
            eprintln!(
                "cannot watch the test PostgreSQL server; stop it by hand ({}): {e}",
                self.dir.path().display()
            );
        }
    }

    /// Its directory (data and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
