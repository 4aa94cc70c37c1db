//! A private, throwaway PostgreSQL cluster: `orderflow dev` starts one when no server is reachable, and the
//! tests that stop or crash PostgreSQL on purpose run on one. initdb into a temporary folder, start it on a free
//! port, stop and delete it on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub struct PrivateCluster {
    dir: PathBuf,
    pg_ctl: PathBuf,
    run_as_postgres: bool,
    pub port: u16,
}

/// Finds a PostgreSQL binary on PATH or in Debian's /usr/lib/postgresql/<version>/bin (newest first).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    newest_versioned(Path::new("/usr/lib/postgresql"), name)
}

/// `<root>/<version>/bin/<name>` of the highest numeric version (Debian's layout).
fn newest_versioned(root: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let binary = entry.path().join("bin").join(name);
            binary.is_file().then_some((version, binary))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, binary)| binary)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PrivateCluster {
    /// initdb + pg_ctl start. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
    pub fn start() -> anyhow::Result<Self> {
        let (Some(initdb), Some(pg_ctl)) = (find_binary("initdb"), find_binary("pg_ctl")) else {
            bail!(
                "no PostgreSQL server is reachable and PostgreSQL's binaries (initdb, pg_ctl) are not installed.\n\
                 Start a server and set DATABASE_URL, or install PostgreSQL (Debian: apt-get install postgresql)."
            );
        };
        let run_as_postgres = is_root();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("orderflow-pg-{}-{}", std::process::id(), &suffix[..8]));
        std::fs::create_dir_all(&dir).context("failed to create the cluster folder")?;
        if run_as_postgres {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("running as root needs a `postgres` user to own the private cluster");
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cluster = Self {
            dir,
            pg_ctl,
            run_as_postgres,
            port,
        };
        let data = cluster.dir.join("data");
        cluster
            .run(
                &initdb,
                &[
                    "-D",
                    path(&data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .context("initdb failed")?;
        cluster.resume().context("pg_ctl start failed")?;
        tracing::info!(port, dir = %cluster.dir.display(), "started a private PostgreSQL cluster (deleted on exit)");
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        self.url_of("orderflow")
    }

    /// The URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server. `immediate` is a crash as far as clients can tell: no checkpoint, every connection cut,
    /// WAL replayed at the next start.
    pub fn stop(&self, immediate: bool) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let mode = if immediate { "immediate" } else { "fast" };
        self.run(&self.pg_ctl, &["-D", path(&data), "-m", mode, "-w", "stop"])
    }

    /// Starts the server again after `stop`, on the same port.
    pub fn resume(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            path(&self.dir)
        );
        let log = self.dir.join("postgres.log");
        self.run(
            &self.pg_ctl,
            &["-D", path(&data), "-l", path(&log), "-o", &options, "-w", "start"],
        )
    }

    fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut command = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let output = command.args(args).output()?;
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_highest_version_wins_in_numeric_order() {
        let root = std::env::temp_dir().join(format!("orderflow-pgbin-{}", std::process::id()));
        for version in ["9", "15", "16", "not-a-version"] {
            let bin = root.join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
        }

        let found = newest_versioned(&root, "initdb");
        let missing = newest_versioned(&root, "pg_ctl");
        std::fs::remove_dir_all(&root).unwrap();

        assert_eq!(found, Some(root.join("16").join("bin").join("initdb")));
        assert_eq!(missing, None);
    }
}
