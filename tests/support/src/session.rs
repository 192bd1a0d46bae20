//! An admin-console session the test keeps open, with the `application_name` it chooses:
//! a hooks' pause mark (`pph-pause/<id>`), an operator's hold (`pph-hold`), or a DBA's psql.
//! PgBouncer lists it in SHOW CLIENTS while it is open; dropping it closes the connection.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

type Reply = mpsc::Sender<Result<String, String>>;

pub struct Session {
    commands: Option<tokio::sync::mpsc::UnboundedSender<(String, Reply)>>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Session {
    /// Connects to `url` (no password in it) with `password` and `application_name`.
    pub fn open(url: &str, password: &str, application_name: &str) -> Result<Session, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        config
            .password(password)
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(5));
        let (commands, mut inbox) = tokio::sync::mpsc::unbounded_channel::<(String, Reply)>();
        let (ready, connected) = mpsc::channel();
        let worker = thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready.send(Err("no runtime".to_string()));
                return;
            };
            runtime.block_on(async move {
                let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
                    Ok(pair) => pair,
                    Err(e) => {
                        let _ = ready.send(Err(format!("{e}")));
                        return;
                    }
                };
                let connection = tokio::spawn(connection);
                let _ = ready.send(Ok(()));
                // Commands until the Session is dropped (the sender closes).
                while let Some((sql, reply)) = inbox.recv().await {
                    let result = client
                        .simple_query(&sql)
                        .await
                        .map(|_| String::new())
                        .map_err(|e| {
                            e.as_db_error()
                                .map(|d| d.message().to_string())
                                .unwrap_or_else(|| e.to_string())
                        });
                    let _ = reply.send(result);
                }
                connection.abort();
            });
        });
        connected
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "no connection within 10 s".to_string())??;
        Ok(Session {
            commands: Some(commands),
            worker: Some(worker),
        })
    }

    /// Runs one command and waits for its answer at most `timeout`.
    pub fn run(&self, sql: &str, timeout: Duration) -> Result<String, String> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or("closed")?
            .send((sql.to_string(), reply))
            .map_err(|_| "session gone".to_string())?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| format!("{sql}: no answer within {timeout:?}"))?
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
