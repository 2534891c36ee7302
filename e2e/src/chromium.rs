//! Headless Chromium (Debian's `chromium`) as a real browser peer, kept to a network namespace
//! of its own.
//!
//! A browser sends traffic on its own (component updates, mDNS for WebRTC host candidates,
//! safe-browsing lookups); the tests must send nothing but loopback. So a test that drives
//! Chromium re-runs itself in a private network namespace (`unshare --net --map-root-user`,
//! loopback brought up inside): the relay, the page server and the browser share a loopback
//! that reaches nothing else. Inside, Chromium runs with `--allow-loopback-in-peer-connection`
//! (WebRTC ignores loopback interfaces otherwise) and loads a page from [`PageServer`], which
//! answers the page's requests with a closure: the test's side of the signaling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Set in the re-run test process: it is inside the private namespace.
pub const NETNS_ENV: &str = "RELAY_E2E_PRIVATE_NETNS";

/// The browser binary: `$CHROMIUM`, else `chromium` (Debian), `chromium-browser`,
/// `google-chrome` on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Are we the re-run inside the private namespace?
pub fn in_private_netns() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

/// Run the test `test_name` of the current test binary again inside a new network namespace
/// with only loopback (up). Its output goes to ours. Err when the namespace cannot be made
/// (no `unshare`, user namespaces disabled): the caller says why it skips.
pub fn rerun_in_private_netns(test_name: &str) -> Result<ExitStatus, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // Probe first, so a refusal is told apart from a failing test.
    let probe = Command::new("unshare")
        .args(["--net", "--map-root-user", "true"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "unshare --net --map-root-user refused: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Command::new("unshare")
        .args(["--net", "--map-root-user", "--"])
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env(NETNS_ENV, "1")
        .status()
        .map_err(|e| format!("re-running {test_name}: {e}"))
}

/// Bring up `lo` in a fresh namespace (it starts down): `ip link set lo up`.
pub fn bring_up_loopback() -> Result<(), String> {
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What a page asked: method, path, body.
pub struct PageRequest {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// The answer: status, content type, body.
pub type PageResponse = (u16, &'static str, String);

/// A minimal HTTP/1.1 server on loopback (one request per connection) for the page and its
/// signaling. Runs until the process ends.
pub struct PageServer {
    pub addr: SocketAddr,
}

impl PageServer {
    pub fn start(
        handler: impl Fn(PageRequest) -> PageResponse + Send + Sync + 'static,
    ) -> std::io::Result<PageServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let handler = Arc::new(handler);
        std::thread::Builder::new()
            .name("page-server".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let handler = handler.clone();
                    std::thread::spawn(move || {
                        let _ = serve_one(conn, &*handler);
                    });
                }
            })?;
        Ok(PageServer { addr })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn serve_one(
    conn: TcpStream,
    handler: &(impl Fn(PageRequest) -> PageResponse + ?Sized),
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_ascii_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("/").to_string(),
    );
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (status, ctype, out) = handler(PageRequest {
        method,
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{out}",
        out.len()
    )?;
    conn.flush()
}

/// A headless Chromium showing one page. Killed on drop.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    /// Start `binary` on `url` with a fresh profile; its log goes to `log`.
    pub fn open(binary: &Path, url: &str, log: &Path) -> std::io::Result<Chromium> {
        let profile = std::env::temp_dir().join(format!(
            "relay-e2e-chromium-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&profile)?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args([
                "--headless=new",
                // Root in the namespace: Chromium's sandbox refuses to run as root.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
                "--autoplay-policy=no-user-gesture-required",
                // WebRTC leaves loopback out of its candidates unless told.
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Chromium { child, profile })
    }

    /// Has it exited (crashed)?
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
