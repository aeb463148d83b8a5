//! The PostgreSQL server the tests run against: `AMBOY_TEST_DATABASE_URL`, else the local
//! default; when neither answers, a throwaway cluster started from the machine's PostgreSQL
//! binaries (`initdb`, `pg_ctl`) in `target/xtask-postgres`, stopped when the run ends.

use std::env;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The URL the tests use when none is set.
pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The port of a throwaway cluster.
const THROWAWAY_PORT: u16 = 55432;

/// A server for the tests; a throwaway cluster stops when this is dropped.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) url: String,
    throwaway: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(data) = &self.throwaway {
            let _ = as_postgres(
                pg_ctl_path().as_deref(),
                data,
                &["stop", "-m", "fast", "-D"],
            );
        }
    }
}

/// Finds or starts the server; fails with what to install when there is none to start.
pub(crate) fn server(root: &Path) -> Result<Server, String> {
    let given = env::var("AMBOY_TEST_DATABASE_URL").ok();
    let url = given.clone().unwrap_or_else(|| DEFAULT_URL.to_owned());
    if answers(&url) {
        ensure_database(&url);
        return Ok(Server {
            url,
            throwaway: None,
        });
    }
    if let Some(given) = given {
        eprintln!(
            "xtask: AMBOY_TEST_DATABASE_URL ({given}) does not answer; starting a throwaway PostgreSQL"
        );
    } else {
        eprintln!("xtask: no PostgreSQL at {DEFAULT_URL}; starting a throwaway one");
    }
    start_throwaway(root)
}

/// Whether something listens at the URL's host and port.
fn answers(url: &str) -> bool {
    let Some((host, port)) = host_port(url) else {
        return false;
    };
    let Ok(addresses) = (host.as_str(), port).to_socket_addrs() else {
        return false;
    };
    addresses
        .into_iter()
        .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok())
}

/// The host and port of a `postgres://user@host:port/db` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((host_port.to_owned(), 5432)),
    }
}

/// `name` on the PATH or in Debian's `/usr/lib/postgresql/<version>/bin`.
fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin").join(name)))
            .filter(|candidate| candidate.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn pg_ctl_path() -> Option<PathBuf> {
    find_binary("pg_ctl")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Runs a PostgreSQL binary with `args` then `data`, as the `postgres` user when run as root
/// (the server refuses to run as root).
fn as_postgres(binary: Option<&Path>, data: &Path, args: &[&str]) -> Result<(), String> {
    let binary = binary.ok_or("no PostgreSQL binary")?;
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    };
    command.args(args).arg(data);
    let status = command
        .status()
        .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {} failed ({status})",
            binary.display(),
            args.join(" ")
        ))
    }
}

fn start_throwaway(root: &Path) -> Result<Server, String> {
    let (Some(initdb), Some(pg_ctl)) = (find_binary("initdb"), find_binary("pg_ctl")) else {
        return Err(
            "the tests need PostgreSQL: set AMBOY_TEST_DATABASE_URL to a server, start \
                    one at 127.0.0.1:5432 (user postgres, trust authentication), or install \
                    the server binaries (Debian: apt-get install postgresql) so that xtask \
                    can start a throwaway one"
                .to_owned(),
        );
    };
    let data = root.join("target").join("xtask-postgres");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|error| format!("cannot create {data:?}: {error}"))?;
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status()
            .map_err(|error| format!("cannot chown {data:?}: {error}"))?;
        if !status.success() {
            return Err(format!("cannot give {data:?} to the postgres user"));
        }
    }
    as_postgres(
        Some(&initdb),
        &data,
        &["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"],
    )?;
    let options = format!(
        "-p {THROWAWAY_PORT} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
        data.display()
    );
    let log = data.join("server.log");
    let log_arg = format!("--log={}", log.display());
    as_postgres(
        Some(&pg_ctl),
        &data,
        &["start", "-w", "-o", &options, &log_arg, "-D"],
    )?;
    Ok(Server {
        url: format!("postgres://postgres@127.0.0.1:{THROWAWAY_PORT}/postgres"),
        throwaway: Some(data),
    })
}

/// The database a `postgres://…/db?…` URL names, and the same URL naming the `postgres`
/// database instead.
fn database_of(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_once('/')?;
    let (name, query) = match path.split_once('?') {
        Some((name, query)) => (name, format!("?{query}")),
        None => (path, String::new()),
    };
    if name.is_empty() {
        return None;
    }
    Some((
        name.to_owned(),
        format!("{scheme}://{authority}/postgres{query}"),
    ))
}

/// Creates the database the URL names when the server answers but has no such database (a
/// private database for one run, `AMBOY_TEST_DATABASE_URL=…/amboy_ci_1`), with `psql` when it
/// is there.
fn ensure_database(url: &str) {
    let (Some(psql), Some((name, admin))) = (find_binary("psql"), database_of(url)) else {
        return;
    };
    let connects = Command::new(&psql)
        .args(["-q", "-X", "-d", url, "-c", "SELECT 1"])
        .output()
        .is_ok_and(|output| output.status.success());
    if connects || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return;
    }
    eprintln!("xtask: creating database {name}");
    let created = Command::new(&psql)
        .args([
            "-q",
            "-X",
            "-d",
            &admin,
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()
        .is_ok_and(|status| status.success());
    if !created {
        eprintln!("xtask: could not create database {name}");
    }
}

/// Drops the schemas earlier test runs left (`amboy_test_…`), with `psql` when it is there.
pub(crate) fn drop_test_schemas(url: &str) {
    let Some(psql) = find_binary("psql") else {
        eprintln!("xtask: no psql; schemas of earlier test runs are left in place");
        return;
    };
    let sql = "DO $$ DECLARE s text; BEGIN \
               FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'amboy\\_test\\_%' LOOP \
               EXECUTE format('DROP SCHEMA %I CASCADE', s); COMMIT; END LOOP; END $$;";
    let status = Command::new(psql)
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .status();
    if !status.is_ok_and(|status| status.success()) {
        eprintln!("xtask: could not drop the schemas of earlier test runs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_of_urls() {
        assert_eq!(
            database_of("postgres://postgres@127.0.0.1:5432/amboy_ci?sslmode=disable"),
            Some((
                "amboy_ci".to_owned(),
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".to_owned()
            ))
        );
        assert_eq!(
            database_of("postgres://u@h/test").map(|(name, _)| name),
            Some("test".to_owned())
        );
        assert_eq!(database_of("postgres://u@h:5432"), None);
        assert_eq!(database_of("postgres://u@h:5432/"), None);
    }

    #[test]
    fn host_and_port_of_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/postgres"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("postgresql://u:p@db.example:6000/x?sslmode=disable"),
            Some(("db.example".into(), 6000))
        );
        assert_eq!(
            host_port("postgres://localhost/db"),
            Some(("localhost".into(), 5432))
        );
        assert_eq!(host_port("mysql://x"), None);
    }
}
