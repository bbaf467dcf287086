//! `jobcell ctl`: the helper job scripts call inside a sandbox. Reads `JOBCELL_API`
//! (`unix:/run/jobcell/api.sock` or `http://127.0.0.1:PORT`) and `JOBCELL_TOKEN`, and talks
//! HTTP/1.1 over a blocking std socket (no async runtime inside sandboxes). [`http`] is the
//! client, also used by tests.

use std::io::{Read, Write};

use serde_json::{json, Value};

/// Errors of `jobcell ctl` and of the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0} is not set")]
    MissingEnv(&'static str),
    #[error("JOBCELL_API must be unix:PATH or http://HOST:PORT")]
    BadApi,
    #[error("connection to the API failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response from the API")]
    BadResponse,
    #[error("refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(&'static str),
}

/// Blocking HTTP/1.1 client over a Unix or TCP stream.
pub mod http {
    use super::*;

    /// A response: status code and body bytes.
    #[derive(Debug)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        pub fn json(&self) -> Result<Value, CtlError> {
            Ok(serde_json::from_slice(&self.body)?)
        }
    }

    /// Most response bytes read (protects the caller from a runaway server).
    const MAX_RESPONSE: u64 = 64 << 20;

    enum Conn {
        Unix(std::os::unix::net::UnixStream),
        Tcp(std::net::TcpStream),
    }

    /// Sends one request with `Connection: close` and reads the whole response.
    /// `api` is `unix:PATH` or `http://HOST:PORT`.
    pub fn request(
        api: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, CtlError> {
        let (mut conn, host) = if let Some(p) = api.strip_prefix("unix:") {
            (
                Conn::Unix(std::os::unix::net::UnixStream::connect(p)?),
                "localhost".to_string(),
            )
        } else if let Some(rest) = api.strip_prefix("http://") {
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') {
                return Err(CtlError::BadApi);
            }
            (
                Conn::Tcp(std::net::TcpStream::connect(hostport)?),
                hostport.to_string(),
            )
        } else {
            return Err(CtlError::BadApi);
        };
        let timeout = Some(std::time::Duration::from_secs(60));
        match &conn {
            Conn::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
            }
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
                return Err(CtlError::Usage("header contains a line break"));
            }
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        } else if method != "GET" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        let mut raw = Vec::new();
        match &mut conn {
            Conn::Unix(s) => {
                s.write_all(req.as_bytes())?;
                if let Some(b) = body {
                    s.write_all(b)?;
                }
                s.take(MAX_RESPONSE).read_to_end(&mut raw)?;
            }
            Conn::Tcp(s) => {
                s.write_all(req.as_bytes())?;
                if let Some(b) = body {
                    s.write_all(b)?;
                }
                s.take(MAX_RESPONSE).read_to_end(&mut raw)?;
            }
        }
        parse_response(&raw)
    }

    fn parse_response(raw: &[u8]) -> Result<Response, CtlError> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(CtlError::BadResponse)?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| CtlError::BadResponse)?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or(CtlError::BadResponse)?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(CtlError::BadResponse)?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = &raw[end + 4..];
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(rest)?
        } else if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
            let len: usize = len.parse().map_err(|_| CtlError::BadResponse)?;
            rest.get(..len).ok_or(CtlError::BadResponse)?.to_vec()
        } else {
            rest.to_vec()
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, CtlError> {
        let mut out = Vec::new();
        loop {
            let nl = data
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or(CtlError::BadResponse)?;
            let size_str = std::str::from_utf8(&data[..nl]).map_err(|_| CtlError::BadResponse)?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| CtlError::BadResponse)?;
            data = &data[nl + 2..];
            if size == 0 {
                return Ok(out);
            }
            out.extend_from_slice(data.get(..size).ok_or(CtlError::BadResponse)?);
            data = data.get(size + 2..).ok_or(CtlError::BadResponse)?;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_plain_and_chunked() {
            let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
            let r = parse_response(
                b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
            )
            .unwrap();
            assert_eq!((r.status, r.body.as_slice()), (404, &b"abcd"[..]));
            assert!(parse_response(b"garbage").is_err());
        }
    }
}

/// `jobcell ctl` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// `jobcell ctl` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCmd {
    /// Print the execution's input as compact JSON.
    Input,
    /// Store JSON (argument, or stdin with -) as the execution's output.
    Output { json: String },
    /// Get or set a variable of the job's owner.
    Var {
        #[command(subcommand)]
        cmd: VarCmd,
    },
    /// Set the execution's condition.
    Condition {
        #[arg(value_parser = ["true", "false"])]
        value: String,
    },
    /// Append a log line (stream "api").
    Log {
        #[arg(required = true)]
        line: Vec<String>,
    },
    /// Token operations.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print the execution's context as JSON.
    Context,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum VarCmd {
    /// Print the value as is; exit 1 with nothing printed when unset.
    Get { key: String },
    /// Set a variable.
    Set { key: String, value: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCmd {
    /// Print a fresh token for this execution.
    Refresh,
}

/// Percent-encodes a path segment.
fn seg(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

struct Client {
    api: String,
    token: String,
    exec: String,
}

impl Client {
    fn from_env() -> Result<Client, CtlError> {
        let api = std::env::var("JOBCELL_API").map_err(|_| CtlError::MissingEnv("JOBCELL_API"))?;
        let token =
            std::env::var("JOBCELL_TOKEN").map_err(|_| CtlError::MissingEnv("JOBCELL_TOKEN"))?;
        // The execution id is in the token; JOBCELL_EXECUTION_ID is the fallback.
        let exec = exec_from_token(&token)
            .or_else(|| std::env::var("JOBCELL_EXECUTION_ID").ok())
            .ok_or(CtlError::MissingEnv("JOBCELL_EXECUTION_ID"))?;
        Ok(Client { api, token, exec })
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response, CtlError> {
        let auth = format!("Bearer {}", self.token);
        let body = body.map(serde_json::to_vec).transpose()?;
        http::request(
            &self.api,
            method,
            path,
            &[("Authorization", &auth)],
            body.as_deref(),
        )
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CtlError> {
        let r = self.call(method, path, body)?;
        if r.status / 100 != 2 {
            return Err(refused(&r));
        }
        r.json()
    }

    fn exec_path(&self, rest: &str) -> String {
        format!("/api/runtime/executions/{}/{rest}", seg(&self.exec))
    }
}

fn refused(r: &http::Response) -> CtlError {
    let message = r
        .json()
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| "request refused".to_string());
    CtlError::Refused {
        status: r.status,
        message,
    }
}

fn exec_from_token(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["executionId"].as_str().map(str::to_string)
}

/// Runs one `jobcell ctl` command; returns the process exit code.
pub fn main(args: CtlArgs) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobcell ctl: {e}");
            match e {
                CtlError::Usage(_) => 2,
                _ => 1,
            }
        }
    }
}

fn run(args: CtlArgs) -> Result<i32, CtlError> {
    let c = Client::from_env()?;
    let mut out = std::io::stdout().lock();
    match args.cmd {
        CtlCmd::Input => {
            let v = c.ok("GET", &c.exec_path("input"), None)?;
            writeln!(out, "{}", v["data"])?;
        }
        CtlCmd::Context => {
            let v = c.ok("GET", &c.exec_path("context"), None)?;
            writeln!(out, "{v}")?;
        }
        CtlCmd::Output { json } => {
            let text = if json == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                json
            };
            let data: Value = serde_json::from_str(&text)?;
            c.ok("POST", &c.exec_path("output"), Some(&json!({"data": data})))?;
        }
        CtlCmd::Var {
            cmd: VarCmd::Get { key },
        } => {
            let r = c.call(
                "GET",
                &c.exec_path(&format!("variables/{}", seg(&key))),
                None,
            )?;
            if r.status == 404 {
                return Ok(1);
            }
            if r.status / 100 != 2 {
                return Err(refused(&r));
            }
            let v = r.json()?;
            let value = v["value"].as_str().ok_or(CtlError::BadResponse)?;
            write!(out, "{value}")?;
        }
        CtlCmd::Var {
            cmd: VarCmd::Set { key, value },
        } => {
            c.ok(
                "PUT",
                &c.exec_path(&format!("variables/{}", seg(&key))),
                Some(&json!({"value": value})),
            )?;
        }
        CtlCmd::Condition { value } => {
            c.ok(
                "POST",
                &c.exec_path("condition"),
                Some(&json!({"condition": value == "true"})),
            )?;
        }
        CtlCmd::Log { line } => {
            c.ok(
                "POST",
                &c.exec_path("logs"),
                Some(&json!({"lines": [line.join(" ")]})),
            )?;
        }
        CtlCmd::Token {
            cmd: TokenCmd::Refresh,
        } => {
            let v = c.ok("POST", "/api/runtime/token/refresh", None)?;
            writeln!(out, "{}", v["token"].as_str().ok_or(CtlError::BadResponse)?)?;
        }
    }
    out.flush()?;
    Ok(0)
}
