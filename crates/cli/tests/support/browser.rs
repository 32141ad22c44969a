//! Headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol, for the service map test: load a page, evaluate JavaScript in
//! it, take a screenshot.
//!
//! The protocol runs over `--remote-debugging-pipe` (file descriptors 3 and
//! 4, messages separated by NUL bytes), set up with two named pipes and a
//! shell's redirections, so the test needs neither a WebSocket client nor
//! `unsafe` code to arrange the descriptors.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running headless browser with one page.
pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    dir: PathBuf,
}

impl Browser {
    /// Starts Chromium and opens `url` in a page of `width`×`height`.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let dir = std::env::temp_dir().join(format!("bulkhead-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("browser dir");
        let (fifo_in, fifo_out) = (dir.join("cdp-in"), dir.join("cdp-out"));
        for f in [&fifo_in, &fifo_out] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).expect("mkfifo");
        }
        // The flags keep Chromium off the network (this machine has none
        // beyond the lab) and away from any desktop.
        let script = r#"exec chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync --disable-extensions \
            --user-data-dir="$1/profile" --window-size="$4" --remote-debugging-pipe about:blank 3<"$2" 4>"$3""#;
        let child = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&dir)
            .arg(&fifo_in)
            .arg(&fifo_out)
            .arg(format!("{width},{height}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromium.log")).expect("log"))
            .spawn()
            .expect("start chromium");
        // Open order matches the shell's: its fd 3 first, then fd 4.
        let to = std::fs::OpenOptions::new().write(true).open(&fifo_in).expect("open the browser's input");
        let from = BufReader::new(std::fs::File::open(&fifo_out).expect("open the browser's output"));
        let mut b = Browser { child, to, from, next_id: 0, session: String::new(), dir };
        let target = b.call(None, "Target.createTarget", json!({"url": url}));
        let id = target["targetId"].as_str().expect("a target id").to_string();
        let attached = b.call(None, "Target.attachToTarget", json!({"targetId": id, "flatten": true}));
        b.session = attached["sessionId"].as_str().expect("a session").to_string();
        b
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to the browser");
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).expect("read from the browser");
            assert!(n > 0, "the browser closed its pipe: {}", self.log());
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).expect("DevTools JSON");
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited); its value as JSON.
    pub fn eval(&mut self, expr: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy, or panics after `timeout`.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for `{expr}` in the page");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes a PNG screenshot of the page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let session = self.session.clone();
        let r = self.call(Some(&session), "Page.captureScreenshot", json!({"format": "png"}));
        let png = base64(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, c)| n | (u32::from(val(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
