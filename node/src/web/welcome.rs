//! The welcome page (`GET /`) and its JSON (`GET /?t=json`, `GET /status/?t=json`).
//!
//! The JSON document has these keys (times are seconds since the Unix epoch, `null` when
//! unknown):
//!
//! - `node`: `kind` (`node` or `introducer`), `nickname`, `tubid`, `version`, `location`
//!   (hints), `listeners`, `hide_ip`, `storage_enabled`;
//! - `handlers`: `[{"hint": "tor", "handler": "tor (embedded arti): bootstrapped 100%"}]`,
//!   the handler each hint type goes through and its state as it describes itself now;
//! - `introducers`: `{"statuses": [text], "connected": n, "list": [{name, tubid,
//!   connected, since, last_error, next_attempt}]}` (`statuses` as in Tahoe);
//! - `servers`: one object per storage server known, with Tahoe's keys (`nodeid`,
//!   `nickname`, `connection_status`, `available_space`, `version`, `last_received_data`)
//!   and Folio's (`tubid`, `connected`, `handler`, `winning_hint`, `since`, `last_error`,
//!   `next_attempt`, `configured`);
//! - `connected_servers`, `known_servers`: counts;
//! - `transfers`: the running and recent transfers, newest first: `{id, kind, phase, done,
//!   total, servers, started}` (no capability or file name is kept);
//! - `announcements`: for an introducer, `{held, subscribers}`; else `null`.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Redirect, Response};
use serde_json::{json, Value};

use super::html::{bytes, esc, relative, Table};
use super::{error, failed, typed, Gateway};
use crate::broker::ServerStatus;
use crate::control::{IntroducerStatus, NodeStatus};
use crate::files::{snapshot, TransferRecord};

/// `GET /`: the page, or its JSON with `t=json`.
pub async fn root(
    State(gw): State<Gateway>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let status = match gw.status() {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    let transfers = gw
        .inner
        .files
        .as_ref()
        .map(|f| f.recent.list())
        .unwrap_or_default();
    match q.get("t").map(String::as_str) {
        None | Some("") => {
            let mut r = typed(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page(&status, &transfers),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Some("json") => json_response(&document(&status, &transfers)),
        Some(t) => error(
            StatusCode::BAD_REQUEST,
            &format!("unknown t={}: the welcome page knows t=json", esc(t)),
        ),
    }
}

/// `GET /status/`: the JSON with `t=json`, else the welcome page.
pub async fn status(
    State(gw): State<Gateway>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    match q.get("t").map(String::as_str) {
        Some("json") => root(State(gw), Query(q)).await,
        _ => axum::response::IntoResponse::into_response(Redirect::to("/")),
    }
}

/// `GET /static/welcome.js`.
pub async fn script() -> Response {
    typed(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        include_str!("static/welcome.js"),
    )
}

/// `GET /static/welcome.css`.
pub async fn style() -> Response {
    typed(
        StatusCode::OK,
        "text/css; charset=utf-8",
        include_str!("static/welcome.css"),
    )
}

pub(crate) fn json_response(v: &Value) -> Response {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    text.push('\n');
    let mut r = typed(StatusCode::OK, "application/json", text);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn transfer_json(t: &TransferRecord) -> Value {
    let s = snapshot(&t.progress);
    json!({
        "id": t.id,
        "kind": t.kind,
        "phase": s.phase,
        "done": s.done,
        "total": s.total,
        "servers": s.servers,
        "started": crate::broker::unix_secs(t.started),
    })
}

/// A connection's state in a sentence.
struct Link<'a> {
    connected: bool,
    handler: Option<&'a str>,
    hint: Option<&'a str>,
    since: Option<u64>,
    last_error: Option<&'a str>,
    next_attempt: Option<u64>,
}

impl Link<'_> {
    fn summary(&self) -> String {
        if self.connected {
            let mut out = "connected".to_string();
            if let Some(h) = self.handler {
                let _ = write!(out, " through {h}");
            }
            if let Some(hint) = self.hint {
                let _ = write!(out, " via {hint}");
            }
            if let Some(since) = self.since {
                let _ = write!(out, ", since {}", relative(since));
            }
            out
        } else {
            let mut out = "not connected".to_string();
            if let Some(e) = self.last_error {
                let _ = write!(out, ": {e}");
            }
            if let Some(next) = self.next_attempt {
                let _ = write!(out, "; next attempt {}", relative(next));
            }
            out
        }
    }
}

/// A server's state in a sentence.
fn server_summary(s: &ServerStatus) -> String {
    Link {
        connected: s.connected,
        handler: s.handler.as_deref(),
        hint: s.winning_hint.as_deref(),
        since: s.since,
        last_error: s.last_error.as_deref(),
        next_attempt: s.next_attempt,
    }
    .summary()
}

/// An introducer's state in a sentence.
fn introducer_summary(i: &IntroducerStatus) -> String {
    Link {
        connected: i.connected,
        handler: None,
        hint: None,
        since: i.since,
        last_error: i.last_error.as_deref(),
        next_attempt: i.next_attempt,
    }
    .summary()
}

/// The JSON document (see the module docs).
pub fn document(s: &NodeStatus, transfers: &[TransferRecord]) -> Value {
    let servers: Vec<Value> = s
        .storage_servers
        .iter()
        .map(|v| {
            json!({
                "nodeid": v.tubid,
                "tubid": v.tubid,
                "nickname": v.nickname,
                "connected": v.connected,
                "connection_status": server_summary(v),
                "handler": v.handler,
                "winning_hint": v.winning_hint,
                "since": v.since,
                "last_received_data": v.last_received,
                "last_error": v.last_error,
                "next_attempt": v.next_attempt,
                "available_space": v.available_space,
                "version": v.version,
                "configured": v.configured,
            })
        })
        .collect();
    json!({
        "node": {
            "kind": s.kind,
            "nickname": s.nickname,
            "tubid": s.tubid,
            "version": s.version,
            "location": s.location,
            "listeners": s.listeners,
            "hide_ip": s.hide_ip,
            "storage_enabled": s.storage_enabled,
        },
        "handlers": s.handlers.iter().map(|(hint, handler)| json!({
            "hint": hint,
            "handler": handler,
        })).collect::<Vec<_>>(),
        "introducers": {
            "statuses": s.introducers.iter().map(introducer_summary).collect::<Vec<_>>(),
            "connected": s.introducers.iter().filter(|i| i.connected).count(),
            "list": s.introducers,
        },
        "servers": servers,
        "connected_servers": s.storage_servers.iter().filter(|v| v.connected).count(),
        "known_servers": s.storage_servers.len(),
        "transfers": transfers.iter().map(transfer_json).collect::<Vec<_>>(),
        "announcements": s.announcements.map(|(held, subscribers)| json!({
            "held": held,
            "subscribers": subscribers,
        })),
    })
}

fn opt(v: Option<String>) -> String {
    v.map_or_else(|| "—".to_string(), |s| esc(&s))
}

fn when(t: Option<u64>) -> String {
    opt(t.map(relative))
}

/// The whole page.
pub fn page(s: &NodeStatus, transfers: &[TransferRecord]) -> String {
    let title = if s.nickname.is_empty() {
        "Folio node".to_string()
    } else {
        format!("Folio node {}", s.nickname)
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <link rel=\"stylesheet\" href=\"/static/welcome.css\">\
         <script src=\"/static/welcome.js\" defer></script></head>\n<body>\
         <h1>{title}</h1><p id=\"stale\"></p>\n{live}\n\
         <footer>The page refreshes itself every two seconds. The same data: \
         <a href=\"/?t=json\">/?t=json</a>.</footer></body></html>\n",
        title = esc(&title),
        live = live(s, transfers),
    )
}

/// The part of the page the script swaps in.
fn live(s: &NodeStatus, transfers: &[TransferRecord]) -> String {
    let mut out = String::from("<div id=\"live\">");
    let connected = s.storage_servers.iter().filter(|v| v.connected).count();
    let intro_up = s.introducers.iter().filter(|i| i.connected).count();
    let healthy = intro_up == s.introducers.len() && (connected > 0 || s.kind == "introducer");
    let _ = write!(
        out,
        "<p id=\"summary\" class=\"summary {}\">",
        if healthy { "ok" } else { "bad" }
    );
    if s.kind == "introducer" {
        let (held, subs) = s.announcements.unwrap_or((0, 0));
        let _ = write!(
            out,
            "Introducer: <b id=\"announcements\">{held}</b> announcements held, \
             <b id=\"subscribers\">{subs}</b> subscribers."
        );
    } else {
        let _ = write!(
            out,
            "Connected to <b id=\"connected-servers\">{connected}</b> of \
             <b id=\"known-servers\">{}</b> storage servers and \
             <b id=\"connected-introducers\">{intro_up}</b> of \
             <b id=\"known-introducers\">{}</b> introducers.",
            s.storage_servers.len(),
            s.introducers.len()
        );
    }
    out.push_str("</p>");

    // The node.
    out.push_str("<h2>This node</h2>");
    let mut t = Table::new("node", &["", ""]);
    let rows: [(&str, String); 8] = [
        ("Nickname", esc(&s.nickname)),
        (
            "TubId",
            format!("<span class=\"id\">{}</span>", esc(&s.tubid)),
        ),
        ("Kind", esc(&s.kind)),
        ("Version", esc(&s.version)),
        (
            "Hides its IP address",
            if s.hide_ip { "yes" } else { "no" }.into(),
        ),
        ("Location", list(&s.location)),
        ("Listeners", list(&s.listeners)),
        (
            "Storage server",
            if s.storage_enabled { "yes" } else { "no" }.into(),
        ),
    ];
    for (k, v) in rows {
        t.row("", &[esc(k), v]);
    }
    out.push_str(&t.finish());

    // Handlers.
    out.push_str("<h2>Connection handlers</h2>");
    let mut t = Table::new("handlers", &["Hint type", "Handler and state"]);
    for (hint, handler) in &s.handlers {
        t.row(
            &format!("class=\"handler\" data-hint=\"{}\"", esc(hint)),
            &[format!("<code>{}</code>", esc(hint)), esc(handler)],
        );
    }
    out.push_str(&t.finish());

    // An introducer has no introducers, servers or transfers of its own.
    if s.kind == "introducer" {
        out.push_str("</div>");
        return out;
    }

    // Introducers.
    out.push_str("<h2>Introducers</h2>");
    let mut t = Table::new(
        "introducers",
        &[
            "Name",
            "TubId",
            "State",
            "Since",
            "Last error",
            "Next attempt",
        ],
    );
    for i in &s.introducers {
        t.row(
            &format!(
                "class=\"introducer {}\" data-tubid=\"{}\"",
                if i.connected { "up" } else { "down" },
                esc(&i.tubid)
            ),
            &[
                esc(&i.name),
                format!("<span class=\"id\">{}</span>", esc(&i.tubid)),
                format!(
                    "<span class=\"state\">{}</span>",
                    if i.connected { "connected" } else { "down" }
                ),
                when(i.since),
                opt(i.last_error.clone()),
                when(i.next_attempt),
            ],
        );
    }
    out.push_str(&t.finish());

    // Storage servers.
    out.push_str("<h2>Storage servers</h2>");
    let mut t = Table::new(
        "servers",
        &[
            "Nickname",
            "TubId",
            "State",
            "Handler",
            "Winning hint",
            "Since",
            "Last received",
            "Space available",
            "Last error / next attempt",
        ],
    );
    for v in &s.storage_servers {
        let trouble = match (&v.last_error, v.next_attempt) {
            (None, None) => "—".to_string(),
            (e, n) => format!(
                "<span class=\"error\">{}</span>{}",
                e.as_deref().map(esc).unwrap_or_default(),
                n.map(|n| format!(" (next attempt {})", relative(n)))
                    .unwrap_or_default()
            ),
        };
        t.row(
            &format!(
                "class=\"server {}\" data-tubid=\"{}\"",
                if v.connected { "up" } else { "down" },
                esc(&v.tubid)
            ),
            &[
                esc(&v.nickname),
                format!("<span class=\"id\">{}</span>", esc(&v.tubid)),
                format!(
                    "<span class=\"state\">{}</span>",
                    if v.connected { "connected" } else { "down" }
                ),
                opt(v.handler.clone()),
                opt(v.winning_hint.clone()),
                when(v.since),
                when(v.last_received),
                opt(v.available_space.map(bytes)),
                trouble,
            ],
        );
    }
    out.push_str(&t.finish());

    // Transfers.
    out.push_str("<h2>Recent uploads and downloads</h2>");
    if transfers.is_empty() {
        out.push_str("<p id=\"no-transfers\">None since the node started.</p>");
    } else {
        let mut t = Table::new(
            "transfers",
            &["#", "Kind", "Phase", "Progress", "Servers", "Started"],
        );
        for tr in transfers {
            let p = snapshot(&tr.progress);
            let pct = p
                .done
                .saturating_mul(100)
                .checked_div(p.total)
                .unwrap_or(100);
            t.row(
                &format!("class=\"transfer\" data-phase=\"{}\"", p.phase),
                &[
                    tr.id.to_string(),
                    tr.kind.into(),
                    p.phase.clone(),
                    format!("{} of {} ({pct}%)", bytes(p.done), bytes(p.total)),
                    p.servers.to_string(),
                    relative(crate::broker::unix_secs(tr.started)),
                ],
            );
        }
        out.push_str(&t.finish());
    }
    out.push_str("</div>");
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "—".into();
    }
    items
        .iter()
        .map(|i| format!("<code>{}</code>", esc(i)))
        .collect::<Vec<_>>()
        .join(" ")
}
