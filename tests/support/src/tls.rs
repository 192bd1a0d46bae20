//! TLS for the harness's servers: a private CA and certificates made with the `openssl` CLI
//! in a test directory, and switching a running [`Postgres`] (ssl = on, a `hostssl`-only
//! pg_hba.conf) or [`PgBouncer`] (`client_tls_*`) to TLS.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{chown_postgres, new_dir, run_ok, PgBouncer, Postgres, CMD_TIMEOUT};

/// A certificate authority of its own, in a private directory (removed on Drop).
pub struct Ca {
    pub dir: PathBuf,
}

/// A server certificate and its key, both readable by the servers (user postgres, 0600).
#[derive(Clone, Debug)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut c = Command::new("openssl");
    c.args(args).current_dir(dir);
    run_ok(&mut c, CMD_TIMEOUT).unwrap_or_else(|e| panic!("openssl {args:?}: {e}"));
}

impl Ca {
    /// A new CA (P-256, valid 2 days): `ca.crt`, `ca.key`.
    pub fn new(name: &str) -> Ca {
        let dir = new_dir(&format!("ca-{name}"));
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                &format!("/CN=pph test CA {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        chown_postgres(&dir);
        Ca { dir }
    }

    /// The CA certificate, as a client's `sslrootcert`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A server certificate (P-256 key) signed by this CA for `names` (`DNS:x` or
    /// `IP:a.b.c.d`), valid for a day from now, or, with `expired`, one whose validity ended a
    /// day ago.
    pub fn issue(&self, file: &str, names: &[&str], expired: bool) -> Cert {
        self.issue_with(
            file,
            names,
            expired,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    /// [`Ca::issue`] with an RSA 2048 key (signed by the CA with SHA-256).
    pub fn issue_rsa(&self, file: &str, names: &[&str]) -> Cert {
        self.issue_with(file, names, false, &["-newkey", "rsa:2048"])
    }

    fn issue_with(&self, file: &str, names: &[&str], expired: bool, key_args: &[&str]) -> Cert {
        let (key, csr, crt) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.crt"),
        );
        let subject = format!("/CN={file}");
        let mut args = vec!["req"];
        args.extend(key_args);
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&self.dir, &args);
        let ext = format!("{file}.ext");
        let mut f = fs::File::create(self.dir.join(&ext)).unwrap();
        writeln!(f, "subjectAltName={}", names.join(",")).unwrap();
        writeln!(f, "extendedKeyUsage=serverAuth").unwrap();
        writeln!(f, "basicConstraints=CA:FALSE").unwrap();
        // `-days -1`: notAfter a day before notBefore (now), so expired from the start.
        let days = if expired { "-1" } else { "1" };
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial(),
                "-out",
                &crt,
                "-days",
                days,
                "-extfile",
                &ext,
            ],
        );
        let (cert, key) = (self.dir.join(&crt), self.dir.join(&key));
        for p in [&cert, &key] {
            fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            chown_postgres(p);
        }
        Cert { cert, key }
    }
}

fn serial() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    format!("{}", 1000 + N.fetch_add(1, Ordering::SeqCst))
}

impl Drop for Ca {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Turns TLS on in a running Postgres and makes TCP connections TLS-only: `ssl = on` with
/// `cert`, and a pg_hba.conf whose TCP lines are all `hostssl` (plaintext TCP is rejected):
/// `postgres` trusted (the harness's psql), every other role by SCRAM (so a client can bind
/// the channel). Local sockets stay trusted. Applied with a reload.
pub fn postgres_tls_only(pg: &Postgres, cert: &Cert) {
    let data = pg.data_dir();
    for (from, to) in [(&cert.cert, "server.crt"), (&cert.key, "server.key")] {
        fs::copy(from, data.join(to)).unwrap();
        chown_postgres(&data.join(to));
    }
    let hba = "local all all trust\n\
               hostssl all postgres 127.0.0.1/32 trust\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\n\
               hostssl replication all 127.0.0.1/32 trust\n";
    fs::write(data.join("pg_hba.conf"), hba).unwrap();
    chown_postgres(&data.join("pg_hba.conf"));
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
    ] {
        pg.psql(sql);
    }
    crate::wait_until(
        "Postgres to serve TLS",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || (pg.psql("SHOW ssl") == "on").then_some(()),
    );
}

/// Turns TLS on for a running PgBouncer's clients: `client_tls_sslmode` (e.g. `require`:
/// plaintext clients are refused) with `cert`, and `extra` settings (e.g. `tls_protocols =
/// tlsv1.2`), appended to its pgbouncer.ini and applied with RELOAD. Its connections to
/// Postgres use TLS when offered (`server_tls_sslmode = prefer`).
pub fn pgbouncer_tls(pgb: &PgBouncer, sslmode: &str, cert: &Cert, extra: &str) {
    let ini = pgb.dir.join("pgbouncer.ini");
    let mut text = fs::read_to_string(&ini).unwrap();
    text.push_str(&format!(
        "client_tls_sslmode = {sslmode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\nserver_tls_sslmode = prefer\n",
        cert.cert.display(),
        cert.key.display()
    ));
    for line in extra.lines() {
        text.push_str(line.trim());
        text.push('\n');
    }
    fs::write(&ini, text).unwrap();
    chown_postgres(&ini);
    pgb.admin("RELOAD")
        .unwrap_or_else(|e| panic!("RELOAD with TLS: {e}\n{}", pgb.log()));
}
