//! Process faults on a real child process: this test binary re-run in "child mode" (see
//! [`child_mode`]) as a tiny TCP echo server on a given port.

use std::net::SocketAddr;
use std::time::Duration;

use squall_chaos::process::{
    ExternalBroker, ManagedProcess, ProcessError, ProcessSpec, Ready, run_shell,
};
use squall_chaos::proxy::api::loopback;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHILD_PORT: &str = "SQUALL_CHAOS_TEST_CHILD_PORT";
const CHILD_STUBBORN: &str = "SQUALL_CHAOS_TEST_CHILD_IGNORE_TERM";
const T: Duration = Duration::from_secs(10);

/// Not a test: when [`CHILD_PORT`] is set, this process is a child started by the tests below
/// and serves TCP echo on that port until killed (ignoring SIGTERM if [`CHILD_STUBBORN`] is
/// set). Without the variable it returns at once.
#[tokio::test]
async fn child_mode() {
    let Ok(port) = std::env::var(CHILD_PORT) else {
        return;
    };
    let _term = if std::env::var(CHILD_STUBBORN).is_ok() {
        Some(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap())
    } else {
        None
    };
    let l = TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// A port free right now on 127.0.0.1.
async fn free_port() -> u16 {
    TcpListener::bind(loopback(0))
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn child(port: u16) -> ProcessSpec {
    ProcessSpec::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_mode", "--nocapture", "--test-threads=1"])
        .env(CHILD_PORT, port.to_string())
        .ready_tcp(format!("127.0.0.1:{port}"))
        .ready_timeout(T)
        .log_to("/dev/null")
}

/// Whether an echo through `addr` answers within `wait`.
async fn answers(addr: SocketAddr, wait: Duration) -> bool {
    let go = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"ping").then_some(())
    };
    matches!(tokio::time::timeout(wait, go).await, Ok(Some(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_answers_and_resume_brings_them_back() {
    let port = free_port().await;
    let addr = loopback(port);
    let mut p = ManagedProcess::start(child(port)).await.unwrap();
    assert!(answers(addr, T).await, "the started child answers");
    p.pause().await.unwrap();
    assert!(p.is_paused() && p.is_running());
    // The kernel still accepts the connection, but nobody reads it.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf))
            .await
            .is_err(),
        "a paused process must not answer"
    );
    p.resume().unwrap();
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .expect("answers after resume")
        .unwrap();
    assert_eq!(&buf, b"held");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_crashes_it_and_restart_brings_up_a_new_process() {
    let port = free_port().await;
    let addr = loopback(port);
    let mut p = ManagedProcess::start(child(port)).await.unwrap();
    let first = p.pid().unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    p.kill9().await.unwrap();
    assert!(!p.is_running());
    assert_eq!(p.pid(), None);
    let mut buf = [0u8; 1];
    let end = tokio::time::timeout(T, conn.read(&mut buf))
        .await
        .expect("the crash ends the connection");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after kill -9"
    );
    assert!(
        matches!(p.pause().await, Err(ProcessError::NotRunning(_))),
        "no signal to a dead process"
    );
    p.restart().await.unwrap();
    assert_ne!(p.pid(), Some(first));
    assert_eq!(p.starts(), 2);
    assert!(answers(addr, T).await, "the restarted process answers");
    // Restart also works on a paused process.
    p.pause().await.unwrap();
    p.restart().await.unwrap();
    assert!(answers(addr, T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_terms_then_kills_a_process_that_ignores_sigterm() {
    let port = free_port().await;
    let mut p = ManagedProcess::start(child(port).stop_grace(Duration::from_secs(5)))
        .await
        .unwrap();
    let status = p.stop().await.unwrap().expect("it was running");
    assert!(!status.success(), "SIGTERM ends the plain child: {status}");
    assert_eq!(p.stop().await.unwrap(), None, "stopping twice is a no-op");

    let port = free_port().await;
    let spec = child(port)
        .env(CHILD_STUBBORN, "1")
        .stop_grace(Duration::from_millis(300));
    let mut p = ManagedProcess::start(spec).await.unwrap();
    let t0 = std::time::Instant::now();
    let status = p.stop().await.unwrap().expect("it was running");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "SIGKILL only after the grace"
    );
    assert!(t0.elapsed() < T);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the stubborn child needed SIGKILL: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_the_child() {
    let port = free_port().await;
    let p = ManagedProcess::start(child(port)).await.unwrap();
    drop(p);
    let deadline = tokio::time::Instant::now() + T;
    while TcpStream::connect(loopback(port)).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child outlived its handle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_starts_say_why() {
    let port = free_port().await;
    let never = ProcessSpec::new("sleep")
        .arg("30")
        .ready_tcp(format!("127.0.0.1:{port}"))
        .ready_timeout(Duration::from_millis(300));
    let e = ManagedProcess::start(never).await.unwrap_err();
    assert!(matches!(e, ProcessError::NotReady { .. }), "{e}");
    let exits = ProcessSpec::parse("sh -c 'exit 3'")
        .unwrap()
        .ready_tcp(format!("127.0.0.1:{port}"));
    let e = ManagedProcess::start(exits).await.unwrap_err();
    assert!(
        matches!(&e, ProcessError::Exited { status, .. } if status.code() == Some(3)),
        "{e}"
    );
    let e = ManagedProcess::start(ProcessSpec::new("/nonexistent/squall"))
        .await
        .unwrap_err();
    assert!(matches!(e, ProcessError::Spawn { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_brokers_run_their_shell_commands() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let port = free_port().await;
    let b = ExternalBroker::new(
        format!("echo start >> {0}", log.display()),
        format!("echo stop >> {0}", log.display()),
    )
    .ready(Ready::Immediately)
    .timeout(T);
    b.start().await.unwrap();
    b.restart().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "start\nstop\nstart\n"
    );
    let bad = ExternalBroker::new("echo broken >&2; exit 7", "true");
    let e = bad.start().await.unwrap_err();
    assert!(e.to_string().contains("broken"), "stderr is reported: {e}");
    let unready = ExternalBroker::new("true", "true")
        .ready(Ready::Tcp(format!("127.0.0.1:{port}")))
        .timeout(Duration::from_millis(300));
    assert!(matches!(
        unready.start().await,
        Err(ProcessError::NotReady { .. })
    ));
    let slow = run_shell("sleep 5", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(slow.to_string().contains("timed out"), "{slow}");
}
