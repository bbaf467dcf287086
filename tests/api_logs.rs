//! Logs over HTTP and WebSocket on a real loopback server: ordered backlog, live lines, the
//! end marker, and who may read which stream.

mod common;

use std::net::SocketAddr;

use axum::http::StatusCode;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn listen(s: &Srv) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = s.app.clone();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, exec: &str, bearer: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}/api/logs/{exec}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_backlog_live_then_end() {
    let s = srv();
    let addr = listen(&s).await;
    let (job, exec, tok) = s.running("alice").await;
    let logs = format!("/api/runtime/executions/{exec}/logs");
    let r = s
        .rt(&tok, "POST", &logs, Some(json!({"lines": ["b1", "b2"]})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The job's own token and the orchestrator key both stream it.
    let mut ws = connect(addr, &exec, &tok).await.unwrap();
    let mut ws_key = connect(addr, &exec, &s.key).await.unwrap();
    for w in [&mut ws, &mut ws_key] {
        for (seq, line) in [(1, "b1"), (2, "b2")] {
            let v = next_json(w).await;
            assert_eq!(
                (v["seq"].as_i64().unwrap(), v["line"].as_str().unwrap()),
                (seq, line)
            );
            assert_eq!(v["stream"], "api");
            assert!(v["ts"].is_string());
        }
    }
    // Live lines, including executor-side appends of stdout/stderr.
    jobcell::api::logs::append(&s.state, &exec, "stdout", vec!["l3".into()])
        .await
        .unwrap();
    jobcell::api::logs::append(&s.state, &exec, "stderr", vec!["l4".into(), "l5".into()])
        .await
        .unwrap();
    for w in [&mut ws, &mut ws_key] {
        for (seq, stream, line) in [
            (3, "stdout", "l3"),
            (4, "stderr", "l4"),
            (5, "stderr", "l5"),
        ] {
            let v = next_json(w).await;
            assert_eq!(
                v,
                json!({"seq": seq, "stream": stream, "ts": v["ts"], "line": line})
            );
        }
    }
    let r = s
        .o(
            "orch-a",
            "POST",
            &format!("/api/internal/jobs/{job}/complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for w in [&mut ws, &mut ws_key] {
        assert_eq!(
            next_json(w).await,
            json!({"end": true, "status": "completed"})
        );
    }
    // After the end: the key still gets backlog + end; the dead token is refused.
    let mut late = connect(addr, &exec, &s.key).await.unwrap();
    let mut seqs = Vec::new();
    loop {
        let v = next_json(&mut late).await;
        if v["end"] == true {
            assert_eq!(v["status"], "completed");
            break;
        }
        seqs.push(v["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(connect(addr, &exec, &tok).await.err(), Some(401));
    // GET with the key: ordered lines and status.
    let r = s
        .o("orch-b", "GET", &format!("/api/logs/{exec}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "completed");
    let lines: Vec<&str> = r.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["b1", "b2", "l3", "l4", "l5"]);
    let r = s
        .o("orch-b", "GET", &format!("/api/logs/{exec}?after=3"), None)
        .await;
    assert_eq!(r.body["lines"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_of_another_execution_with_a_token() {
    let s = srv();
    let addr = listen(&s).await;
    let (_ja, exec_a, tok_a) = s.running("alice").await;
    let (_jb, exec_b, tok_b) = s.running("bob").await;
    assert_eq!(connect(addr, &exec_b, &tok_a).await.err(), Some(403));
    assert_eq!(connect(addr, &exec_a, "not-a-token").await.err(), Some(401));
    assert_eq!(connect(addr, &exec_a, &tok_b).await.err(), Some(403));
    assert_eq!(connect(addr, "ex_unknown", &s.key).await.err(), Some(404));
    // The HTTP read is orchestrator-only.
    let r = s
        .rt(&tok_a, "GET", &format!("/api/logs/{exec_a}"), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s.o("o", "GET", "/api/logs/ex_unknown", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Many lines posted while streaming arrive complete and in order.
    let mut ws = connect(addr, &exec_a, &tok_a).await.unwrap();
    let logs = format!("/api/runtime/executions/{exec_a}/logs");
    for i in 0..50 {
        let lines: Vec<String> = (0..40).map(|j| format!("{}", i * 40 + j)).collect();
        let r = s
            .rt(&tok_a, "POST", &logs, Some(json!({"lines": lines})))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for want in 1..=2000i64 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["seq"].as_i64().unwrap(), want);
        assert_eq!(v["line"].as_str().unwrap(), (want - 1).to_string());
    }
}
