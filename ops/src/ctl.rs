//! `starling ctl`: the admin API from the command line, so that operators
//! need not write curl by hand. It speaks plain HTTP/1.1 to one node (any
//! node answers for the whole cluster) with the admin token, and prints
//! members and clients as tables, everything else as JSON.

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The arguments of `starling ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node's HTTP address (host:port)
    #[arg(long, default_value = "127.0.0.1:8080", env = "STARLING_CTL_ADDR")]
    pub addr: String,
    /// The admin token (http.token); needed unless the node has none and is
    /// on this machine
    #[arg(long, env = "STARLING_HTTP__TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The members, their roles and lag, the leader and the term
    Members,
    /// Remove a member (a dead node, or one scaled away) by id
    RemoveMember { id: u64 },
    /// Have the leader hand leadership to another voter
    TransferLeader,
    /// List clients (connected or not)
    Clients {
        /// Client ids starting with this
        #[arg(long)]
        prefix: Option<String>,
        /// Only connected (true) or disconnected (false) ones
        #[arg(long)]
        connected: Option<bool>,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One client: its session and subscriptions
    Client { id: String },
    /// Disconnect a client (MQTT 5: 0x98); its will is published
    Kick { id: String },
    /// Delete an offline session and its queue
    DeleteSession { id: String },
    /// List retained messages matching a filter
    Retained {
        #[arg(default_value = "#")]
        filter: String,
    },
    /// Remove the retained message of a topic
    DeleteRetained { topic: String },
    /// Publish as the broker
    Publish {
        topic: String,
        payload: String,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long)]
        retain: bool,
    },
    /// Have every node read its password and ACL files again
    ReloadAuth,
    /// Drain node N and stop it, as SIGTERM does: its clients are told to
    /// go and reconnect elsewhere
    Drain { id: u64 },
}

/// Runs one `ctl` command; what it prints goes to standard output.
pub async fn run(args: &CtlArgs) -> anyhow::Result<()> {
    let api = Api {
        addr: &args.addr,
        token: args.token.as_deref(),
    };
    match &args.command {
        CtlCommand::Members => {
            let view = api.call("GET", "/api/v1/cluster", None).await?;
            print!("{}", members_table(&view));
        }
        CtlCommand::RemoveMember { id } => {
            api.call("DELETE", &format!("/api/v1/cluster/members/{id}"), None)
                .await?;
            println!("node {id} removed");
        }
        CtlCommand::TransferLeader => {
            let moved = api
                .call("POST", "/api/v1/cluster/leader/transfer", None)
                .await?;
            println!(
                "leadership moved from node {} to node {}",
                moved["previous"], moved["leader"]
            );
        }
        CtlCommand::Clients {
            prefix,
            connected,
            limit,
        } => {
            let mut query = format!("limit={limit}");
            if let Some(prefix) = prefix {
                query.push_str(&format!("&prefix={}", encode(prefix)));
            }
            if let Some(connected) = connected {
                query.push_str(&format!("&connected={connected}"));
            }
            let list = api
                .call("GET", &format!("/api/v1/clients?{query}"), None)
                .await?;
            print!("{}", clients_table(&list));
        }
        CtlCommand::Client { id } => {
            let path = format!("/api/v1/clients/{}", encode(id));
            print_json(&api.call("GET", &path, None).await?);
        }
        CtlCommand::Kick { id } => {
            let path = format!("/api/v1/clients/{}", encode(id));
            api.call("DELETE", &path, None).await?;
            println!("{id} disconnected");
        }
        CtlCommand::DeleteSession { id } => {
            let path = format!("/api/v1/sessions/{}", encode(id));
            api.call("DELETE", &path, None).await?;
            println!("session {id} deleted");
        }
        CtlCommand::Retained { filter } => {
            let path = format!("/api/v1/retained?filter={}", encode(filter));
            print_json(&api.call("GET", &path, None).await?);
        }
        CtlCommand::DeleteRetained { topic } => {
            let path = format!("/api/v1/retained/{}", encode_path(topic));
            api.call("DELETE", &path, None).await?;
            println!("retained message of {topic} removed");
        }
        CtlCommand::Publish {
            topic,
            payload,
            qos,
            retain,
        } => {
            let body = serde_json::json!({
                "topic": topic, "payload": payload, "qos": qos, "retain": retain,
            });
            api.call("POST", "/api/v1/publish", Some(&body)).await?;
            println!("published to {topic}");
        }
        CtlCommand::Drain { id } => {
            api.call("POST", &format!("/api/v1/nodes/{id}/drain"), None)
                .await?;
            println!("node {id} drains and stops");
        }
        CtlCommand::ReloadAuth => {
            api.call("POST", "/api/v1/auth/reload", None).await?;
            println!("every node reloads its password and ACL files");
        }
    }
    Ok(())
}

struct Api<'a> {
    addr: &'a str,
    token: Option<&'a str>,
}

impl Api<'_> {
    /// One request; the JSON answer of a 2xx (`Null` when empty), else an
    /// error with the API's message.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("cannot reach {}", self.addr))?;
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n",
                self.addr,
                body.len()
            );
            if let Some(token) = self.token {
                request.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            request.push_str("\r\n");
            request.push_str(&body);
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            anyhow::Ok(answer)
        };
        let answer = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("no answer from {} within {TIMEOUT:?}", self.addr))??;
        let (status, body) = parse_response(&answer)?;
        let json = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))?
        };
        if !(200..300).contains(&status) {
            let message = json["error"]["message"].as_str().unwrap_or(&body);
            bail!("{method} {path}: {status}: {message}");
        }
        Ok(json)
    }
}

/// The status and the body of an HTTP/1.1 answer (plain or chunked).
fn parse_response(answer: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("a malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("an HTTP answer without a status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes all but unreserved characters, for a query value or one
/// path segment.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A topic as a path: its levels encoded, its slashes kept.
fn encode_path(topic: &str) -> String {
    topic.split('/').map(encode).collect::<Vec<_>>().join("/")
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn members_table(view: &Value) -> String {
    let mut out = format!(
        "node {} sees term {}, leader {}, applied index {}\n{:<6}{:<10}{:<6}{:<8}{:<8}{}\n",
        cell(&view["node_id"]),
        cell(&view["term"]),
        cell(&view["leader"]),
        cell(&view["applied_index"]),
        "ID",
        "ROLE",
        "UP",
        "CONN",
        "LAG",
        "ADDRESS"
    );
    for m in view["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<6}{:<10}{:<6}{:<8}{:<8}{}\n",
            cell(&m["id"]),
            cell(&m["role"]),
            if m["up"] == true { "yes" } else { "no" },
            cell(&m["connections"]),
            cell(&m["lag"]),
            cell(&m["address"])
        ));
    }
    out
}

fn clients_table(list: &Value) -> String {
    let mut out = format!(
        "{:<32}{:<10}{:<6}{:<6}{:<8}{}\n",
        "CLIENT ID", "CONNECTED", "NODE", "MQTT", "QUEUED", "ADDRESS"
    );
    for c in list["clients"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<32}{:<10}{:<6}{:<6}{:<8}{}\n",
            cell(&c["client_id"]),
            cell(&c["connected"]),
            cell(&c["node"]),
            cell(&c["protocol"]),
            cell(&c["queued_messages"]),
            cell(&c["address"])
        ));
    }
    if let Some(next) = list["next"].as_str() {
        out.push_str(&format!("(more after {next})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_plain_and_chunked() {
        let plain = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (404, "{}".to_owned()));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, "{\"a\":1}".to_owned())
        );
    }

    #[test]
    fn ids_and_topics_are_encoded_for_urls() {
        assert_eq!(encode("a b/c+#"), "a%20b%2Fc%2B%23");
        assert_eq!(encode_path("sensors/+ x"), "sensors/%2B%20x");
    }

    #[test]
    fn members_print_as_a_table() {
        let view = serde_json::json!({
            "node_id": 1, "term": 3, "leader": 2, "applied_index": 40,
            "members": [
                {"id": 1, "role": "follower", "up": true, "lag": null, "address": "a:1"},
                {"id": 2, "role": "leader", "up": true, "connections": 4, "lag": null, "address": "b:1"},
            ]
        });
        let table = members_table(&view);
        assert!(table.starts_with("node 1 sees term 3, leader 2, applied index 40\n"));
        assert!(
            table.contains("2     leader    yes   4       -       b:1\n"),
            "{table}"
        );
    }
}
