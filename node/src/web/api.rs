//! The web API: Tahoe-LAFS's `/uri` paths, on Folio's capabilities.
//!
//! | Request | What it does | Answer |
//! |---|---|---|
//! | `PUT /uri` (body: the file) | stores an immutable file; `?format=SDMF` or `MDMF` (or `mutable=true`) a mutable one | `200`, the cap |
//! | `POST /uri?t=mkdir` (or `PUT`) | makes a directory linked nowhere | `200`, its write cap |
//! | `GET /uri?uri=CAP` | other arguments are kept | `302` to `/uri/CAP` |
//! | `GET /uri/CAP[/PATH]` | a file's bytes (`Content-Type` from `?filename=` or the last name; one `Range` on an immutable file), a directory's listing as HTML; `HEAD` fetches nothing from the grid for an immutable file | `200`/`206` |
//! | `GET …?t=json` | the file or directory as Tahoe's JSON (`["filenode", {…}]`, `["dirnode", {…, "children": {…}}]`) | `200` |
//! | `GET …?t=uri`, `?t=readonly-uri` | the cap (the read-only cap) | `200` |
//! | `PUT /uri/DIRCAP/PATH/NAME` (body: the file) | stores the file there (missing directories are made); over a mutable file held with write authority, a new version; `?replace=false` refuses an existing name, `only-files` an existing directory; `?format=` as above | `201` new, `200` replaced; the cap |
//! | `PUT …?t=uri` (body: a cap) | links the cap there | `201`/`200`, the cap |
//! | `PUT`/`POST /uri/DIRCAP/PATH?t=mkdir` | makes the directories of `PATH` that are missing (`&name=NAME`: one more below it) | `200`, the cap |
//! | `DELETE /uri/DIRCAP/PATH/NAME` | removes the entry | `200`, the removed cap |
//!
//! Errors are `text/plain` with a message: `400` a malformed cap, name or argument; `403`
//! a change through a read-only cap, or a cross-origin write; `404` no such entry; `409`
//! the name exists (`replace=false`), a file in the way of a directory, or another writer
//! changed a mutable file meanwhile; `410` the file cannot be recovered (too few shares
//! found); `416` a range past the end; `503` an upload that could not place its shares
//! (too few servers) or a node shutting down; `501` files on an introducer.
//!
//! Uploads are spooled to `BASEDIR/tmp/` as they arrive (never held whole in memory);
//! downloads of immutable files stream as they are decoded. A `Range` read fetches the file
//! from its start up to the end of the range and sends only the range (no segment-level
//! seek yet); several ranges in one header are answered with the whole file. Mutable files
//! (at most about 1.5 MiB at 3-of-10) are read whole and offer no ranges: a version may
//! change between two requests, and a resumed read would join two versions.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes as HttpBytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::html::{bytes, esc, Table};
use super::welcome::json_response;
use super::{error, failed, typed, Gateway};
use crate::caps::Cap;
use crate::control::{ControlError, ListEntry, Upload};
use crate::files::{Files, Reporter};

type Args = Query<BTreeMap<String, String>>;

/// The Content-Security-Policy of a file's contents: whatever the file holds (an HTML page,
/// an SVG image) runs no script, submits no form, opens no window by itself (a link the
/// reader clicks may open one, or start a download), and loads nothing from anywhere but
/// this gateway, so it cannot send its own URL (which holds a cap) away by itself, not
/// even as a `Referer` it asks for. It keeps the gateway's origin (`allow-same-origin`
/// without `allow-scripts` gives it nothing to act with), so that a page stored on the grid
/// can show the grid's images and style sheets.
const FILE_POLICY: &str = "sandbox allow-same-origin allow-downloads allow-popups; \
     default-src 'none'; \
     img-src 'self' data:; media-src 'self' data:; style-src 'self' 'unsafe-inline'; \
     font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The most bytes a `t=uri` body (a cap) may have.
const MAX_CAP_BODY: usize = 4096;
/// How much of a download the gateway buffers between the decoder and the socket.
const PIPE: usize = 256 * 1024;

fn arg<'a>(q: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    q.get(k).map(String::as_str)
}

/// `format=` / `mutable=`: whether a new file is mutable.
fn wants_mutable(q: &BTreeMap<String, String>) -> Result<bool, String> {
    let by_format = match arg(q, "format").map(str::to_ascii_uppercase).as_deref() {
        None | Some("") | Some("CHK") => false,
        Some("SDMF") | Some("MDMF") => true,
        Some(other) => return Err(format!("unknown format {other}: known are CHK, SDMF, MDMF")),
    };
    let by_flag = flag(q, "mutable")?.unwrap_or(false);
    Ok(by_format || by_flag)
}

/// A yes/no argument, spelled as Tahoe accepts it (`true`, `t`, `1`, `on`; `false`, `f`,
/// `0`, `off`; any case); `None` when absent.
fn flag(q: &BTreeMap<String, String>, k: &str) -> Result<Option<bool>, String> {
    let Some(v) = arg(q, k) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "on" => Ok(Some(true)),
        "false" | "f" | "0" | "off" => Ok(Some(false)),
        _ => Err(format!("{k}= takes true or false")),
    }
}

/// What `replace=` allows with a name already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Replace anything (`true`, the default).
    Any,
    /// Replace files but not directories (`only-files`).
    OnlyFiles,
    /// Replace nothing (`false`).
    Never,
}

/// `replace=`: `true` (the default), `false` or `only-files`.
fn replace(q: &BTreeMap<String, String>) -> Result<Replace, String> {
    if arg(q, "replace").is_some_and(|v| v.eq_ignore_ascii_case("only-files")) {
        return Ok(Replace::OnlyFiles);
    }
    match flag(q, "replace") {
        Ok(None | Some(true)) => Ok(Replace::Any),
        Ok(Some(false)) => Ok(Replace::Never),
        Err(_) => Err("replace= takes true, false or only-files".into()),
    }
}

/// A request refused before any work is done, as its response.
struct Refused(StatusCode, String);

impl From<ControlError> for Refused {
    fn from(e: ControlError) -> Refused {
        Refused(super::status_of(&e), e.to_string())
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// The node's file side and the place a `/uri/CAP/PATH` request names.
fn place<'a>(gw: &'a Gateway, uri: &Uri) -> Result<(&'a Files, String, Vec<String>), Refused> {
    let (root, path) =
        split_uri_path(uri.path()).map_err(|m| Refused(StatusCode::BAD_REQUEST, m))?;
    Ok((gw.files()?, root, path))
}

/// A request path `/uri/CAP/a/b` split into the cap and the names, each percent-decoded.
/// A trailing slash is allowed (a directory); other empty names, bad escapes and names that
/// are not UTF-8 are refused with a message.
pub fn split_uri_path(path: &str) -> Result<(String, Vec<String>), String> {
    let rest = path.strip_prefix("/uri/").unwrap_or("");
    let mut parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > 1 && parts.last() == Some(&"") {
        parts.pop();
    }
    let mut decoded = Vec::with_capacity(parts.len());
    for p in parts {
        if p.is_empty() {
            return Err("the path has an empty name (two slashes in a row)".into());
        }
        decoded.push(
            percent_decode(p)
                .ok_or_else(|| "the path is not valid percent-encoded UTF-8".to_string())?,
        );
    }
    let cap = decoded.remove(0);
    Ok((cap, decoded))
}

/// `%XX` decoded; `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `s` percent-encoded for one path segment (letters, digits and `-._~:` stay as they are).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The gateway URL (`base`, ending in `/`) of `root` and the names below it.
pub fn url_of(base: &str, root: &str, path: &[String]) -> String {
    let mut url = format!(
        "{}/uri/{}",
        base.trim_end_matches('/'),
        percent_encode(root)
    );
    for p in path {
        url.push('/');
        url.push_str(&percent_encode(p));
    }
    url
}

/// `GET /uri?uri=CAP[&…]`: a redirect to `/uri/CAP[?…]`, the other arguments kept (so
/// `?uri=CAP&t=json` reaches the cap's JSON).
pub async fn uri_query(Query(q): Args) -> Response {
    let Some(cap) = arg(&q, "uri") else {
        return error(StatusCode::BAD_REQUEST, "GET /uri needs ?uri=CAP");
    };
    if let Err(e) = cap.trim().parse::<Cap>() {
        return failed(&ControlError::BadCap(e.to_string()));
    }
    // 302, as Tahoe answers (axum's `Redirect::to` is a 303).
    let mut to = format!("/uri/{}", percent_encode(cap.trim()));
    let rest: Vec<String> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "uri")
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    if !rest.is_empty() {
        to.push('?');
        to.push_str(&rest.join("&"));
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Why an upload's body is bounded: it becomes a mutable file.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// A new mutable file (`format=SDMF`/`MDMF`).
    NewMutable,
    /// A new version of the mutable file at the name.
    NewVersion,
}

/// Spools a request body into a new upload, refusing it as soon as it passes `limit`'s
/// bound.
async fn spool(
    files: &Files,
    body: Body,
    limit: Option<Limit>,
) -> Result<crate::files::Spool, ControlError> {
    let spool = files.spool().await?;
    let mut stream = body.into_data_stream();
    let bound = limit.map(|l| (l, files.max_mutable()));
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ControlError::Io(format!("reading the request body: {e}")))?;
        got += chunk.len() as u64;
        if let Some((limit, max)) = bound.filter(|(_, max)| got > *max) {
            let advice = match limit {
                Limit::NewMutable => "store it immutable (no format=, or format=CHK) and link it",
                Limit::NewVersion => {
                    "this name holds a mutable file, so the body would be its new version; \
                     unlink it first (DELETE) to store an immutable file there"
                }
            };
            return Err(ControlError::TooLarge(format!(
                "a mutable file holds at most {max} bytes at shares.needed={}; this body is \
                 larger: {advice}",
                files.params.needed
            )));
        }
        for piece in chunk.chunks(crate::storage::MAX_CHUNK as usize) {
            spool.write(folio_rpc::Bytes(piece.to_vec())).await?;
        }
    }
    Ok(spool)
}

fn text(status: StatusCode, s: &str) -> Response {
    typed(status, "text/plain; charset=utf-8", format!("{s}\n"))
}

/// `PUT /uri`: a new file; `PUT /uri?t=mkdir`: a new directory linked nowhere.
pub async fn put_uri(State(gw): State<Gateway>, Query(q): Args, body: Body) -> Response {
    match arg(&q, "t").unwrap_or("") {
        "" => {}
        "mkdir" => return mkdir_unlinked(&gw).await,
        t => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown t={}: PUT /uri knows t=mkdir", esc(t)),
            )
        }
    }
    let mutable = match wants_mutable(&q) {
        Ok(m) => m,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let result = async {
        let files = gw.files()?;
        let spool = spool(files, body, mutable.then_some(Limit::NewMutable)).await?;
        spool
            .finish_with(Reporter::Quiet, None, mutable, true)
            .await
    }
    .await;
    match result {
        Ok(r) => text(StatusCode::OK, &r.cap),
        Err(e) => failed(&e),
    }
}

/// `POST /uri?t=mkdir`: a directory linked nowhere.
pub async fn post_uri(State(gw): State<Gateway>, Query(q): Args) -> Response {
    match arg(&q, "t") {
        Some("mkdir") => {}
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "POST /uri takes t=mkdir (files are stored with PUT /uri)",
            )
        }
    }
    mkdir_unlinked(&gw).await
}

/// A new directory linked nowhere: its write cap.
async fn mkdir_unlinked(gw: &Gateway) -> Response {
    let r = async { gw.files()?.mkdir(None, &[]).await }.await;
    match r {
        Ok(cap) => text(StatusCode::OK, &cap),
        Err(e) => failed(&e),
    }
}

/// `GET /uri/CAP[/PATH]`.
pub async fn get_path(
    State(gw): State<Gateway>,
    Query(q): Args,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (files, root, path) = match place(&gw, &uri) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let entry = match files.stat(&root, &path).await {
        Ok(e) => e,
        Err(e) => return failed(&e),
    };
    match arg(&q, "t") {
        Some("json") => json_of(files, &path, &entry).await,
        Some("uri") => text(StatusCode::OK, own_cap(&entry)),
        Some("readonly-uri") => text(StatusCode::OK, &entry.ro_uri),
        None | Some("") if entry.kind == "dir" => listing(files, &root, &path, &entry).await,
        None | Some("") => {
            let name = arg(&q, "filename")
                .map(str::to_string)
                .or_else(|| path.last().cloned());
            let save = flag(&q, "save").ok().flatten().unwrap_or(false);
            let head = method == Method::HEAD;
            contents(files, &entry, name.as_deref(), save, head, &headers).await
        }
        Some(t) => error(
            StatusCode::BAD_REQUEST,
            &format!("unknown t={}: known are json, uri, readonly-uri", esc(t)),
        ),
    }
}

fn format_of(e: &ListEntry) -> &'static str {
    match e.kind.as_str() {
        "file" if e.ro_uri.starts_with(crate::immutable::LIT_PREFIX) => "LIT",
        "file" => "CHK",
        _ => "MUT",
    }
}

fn metadata(e: &ListEntry) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(t) = e.mtime {
        m.insert("mtime".into(), json!(t));
    }
    m.insert(
        "tahoe".into(),
        json!({ "linkcrtime": e.link_created, "linkmotime": e.link_modified }),
    );
    Value::Object(m)
}

fn node_json(e: &ListEntry, with_meta: bool) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("mutable".into(), json!(e.kind != "file"));
    o.insert("ro_uri".into(), json!(e.ro_uri));
    if let Some(w) = &e.rw_uri {
        o.insert("rw_uri".into(), json!(w));
    }
    if e.kind != "dir" {
        o.insert("format".into(), json!(format_of(e)));
        if let Some(s) = e.size {
            o.insert("size".into(), json!(s));
        }
    }
    if with_meta {
        o.insert("metadata".into(), metadata(e));
    }
    let kind = if e.kind == "dir" {
        "dirnode"
    } else {
        "filenode"
    };
    json!([kind, Value::Object(o)])
}

/// The cap an entry was found with: its write cap when it was reached with write
/// authority (listing by it needs no second walk from the root).
fn own_cap(entry: &ListEntry) -> &str {
    entry.rw_uri.as_deref().unwrap_or(&entry.ro_uri)
}

/// `?t=json`: Tahoe's shape.
async fn json_of(files: &Files, path: &[String], entry: &ListEntry) -> Response {
    let mut v = node_json(entry, !path.is_empty());
    if entry.kind == "dir" {
        let listing = match files.list(own_cap(entry), &[]).await {
            Ok(l) => l,
            Err(e) => return failed(&e),
        };
        let children: serde_json::Map<String, Value> = listing
            .entries
            .iter()
            .map(|c| (c.name.clone(), node_json(c, true)))
            .collect();
        v[1]["children"] = Value::Object(children);
    }
    json_response(&v)
}

/// The directory `entry` (found at `path` below `root`) as an HTML page, each entry a link.
async fn listing(files: &Files, root: &str, path: &[String], entry: &ListEntry) -> Response {
    let l = match files.list(own_cap(entry), &[]).await {
        Ok(l) => l,
        Err(e) => return failed(&e),
    };
    let base = url_of("", root, path);
    let shown = if path.is_empty() {
        "/".to_string()
    } else {
        format!("/{}", path.join("/"))
    };
    let mut t = Table::new("entries", &["Name", "Kind", "Size"]);
    for e in &l.entries {
        let href = format!("{base}/{}", percent_encode(&e.name));
        t.row(
            &format!("class=\"entry\" data-kind=\"{}\"", esc(&e.kind)),
            &[
                format!("<a href=\"{}\">{}</a>", esc(&href), esc(&e.name)),
                esc(&e.kind),
                e.size.map(bytes).unwrap_or_else(|| "—".into()),
            ],
        );
    }
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{shown}</title>\
         <link rel=\"stylesheet\" href=\"/static/welcome.css\"></head><body>\
         <h1>Directory {shown}</h1>{table}<footer><a href=\"/\">Welcome page</a> · \
         <a href=\"{json}\">JSON</a></footer></body></html>\n",
        shown = esc(&shown),
        table = t.finish(),
        json = esc(&format!("{base}?t=json")),
    );
    typed(StatusCode::OK, "text/html; charset=utf-8", page)
}

/// A Content-Type from a file name's extension.
pub fn content_type(name: Option<&str>) -> &'static str {
    let ext = name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "log" | "md" => "text/plain; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "xml" => "application/xml",
        "csv" => "text/csv",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// A range that starts past the end of the file (`416`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The first range of a `Range: bytes=…` header, as `(first, last)` inclusive, for a file
/// of `size` bytes. `Ok(None)`: no header, or one not understood (the whole file is sent,
/// as RFC 9110 allows). `Err(Unsatisfiable)`: it starts past the end.
pub fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    // Several ranges would need a multipart answer: the whole file instead (RFC 9110 allows
    // ignoring Range).
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
        (Ok(a), Err(_)) if b.is_empty() => (a, size.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                return Err(Unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        _ => return Ok(None),
    };
    if range.0 >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some(range))
}

fn range_header(h: &HeaderMap) -> Option<&str> {
    h.get(header::RANGE).and_then(|v| v.to_str().ok())
}

fn disposition(name: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Writes only bytes `[skip, skip + remaining)` of what it is given to `inner`; past them,
/// every write fails, which ends the download feeding it.
struct RangeWriter<W> {
    inner: W,
    skip: u64,
    remaining: u64,
    /// Whether a write past the range was refused (the download was ended on purpose).
    refused: bool,
}

impl<W> RangeWriter<W> {
    fn new(inner: W, skip: u64, len: u64) -> Self {
        RangeWriter {
            inner,
            skip,
            remaining: len,
            refused: false,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for RangeWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.remaining == 0 {
            this.refused = true;
            return Poll::Ready(Err(std::io::Error::other("the range is sent")));
        }
        let skipped = this.skip.min(buf.len() as u64) as usize;
        let rest = &buf[skipped..];
        if rest.is_empty() {
            this.skip -= skipped as u64;
            return Poll::Ready(Ok(buf.len()));
        }
        let take = rest
            .len()
            .min(this.remaining.min(usize::MAX as u64) as usize);
        match std::pin::Pin::new(&mut this.inner).poll_write(cx, &rest[..take]) {
            Poll::Ready(Ok(n)) => {
                this.skip -= skipped as u64;
                this.remaining -= n as u64;
                Poll::Ready(Ok(skipped + n))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A file's bytes.
async fn contents(
    files: &Files,
    entry: &ListEntry,
    name: Option<&str>,
    save: bool,
    head: bool,
    headers: &HeaderMap,
) -> Response {
    let cap = own_cap(entry).to_string();
    let mut resp = if entry.kind == "file" {
        let size = entry.size.unwrap_or(0);
        let range = match parse_range(range_header(headers), size) {
            Ok(r) => r,
            Err(Unsatisfiable) => return unsatisfiable(size),
        };
        if head {
            // What a GET would answer, without fetching anything: the size is in the cap.
            let status = if range.is_some() {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            };
            ranged(status, size, range, Body::empty())
        } else {
            stream_immutable(files, cap, size, range).await
        }
    } else {
        // A mutable file's newest version, whole: it may change between two requests, so
        // no ranges are offered (a resumed read could join two versions).
        let mut data = Vec::new();
        if let Err(e) = files.download_to(&cap, &mut data, Reporter::Quiet).await {
            return failed(&e);
        }
        let size = data.len() as u64;
        let mut r = ranged(
            StatusCode::OK,
            size,
            None,
            if head {
                Body::empty()
            } else {
                Body::from(data)
            },
        );
        r.headers_mut().remove(header::ACCEPT_RANGES);
        r
    };
    if resp.status().is_success() {
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(name)),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(FILE_POLICY),
        );
        if save {
            h.insert(
                header::CONTENT_DISPOSITION,
                disposition(name.unwrap_or("file")),
            );
        }
    }
    resp
}

fn unsatisfiable(size: u64) -> Response {
    let mut r = error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        &format!("the range starts past the end of the file ({size} bytes)"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

fn ranged(status: StatusCode, size: u64, range: Option<(u64, u64)>, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = match range {
        Some((a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            b - a + 1
        }
        None => size,
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// An immutable file, streamed as it is decoded. The response starts once the first
/// bytes are ready (or the download ended), so a file that cannot be read is a `410`, not a
/// cut-off `200`; a download failing later ends the connection short of its
/// `Content-Length`, which every client reports as an error. The last bytes of the file are
/// held back until the download has checked the whole file, so a file that fails that
/// check never looks complete. When nobody reads any more (the client went away), the
/// download stops.
async fn stream_immutable(
    files: &Files,
    cap: String,
    size: u64,
    range: Option<(u64, u64)>,
) -> Response {
    let (skip, len) = match range {
        Some((a, b)) => (a, b - a + 1),
        None => (0, size),
    };
    let (writer, reader) = tokio::io::duplex(PIPE);
    let (mut done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), ControlError>>();
    let files = files.clone();
    tokio::spawn(async move {
        let mut w = RangeWriter::new(writer, skip, len);
        let r = tokio::select! {
            r = files.download_to(&cap, &mut w, Reporter::Quiet) => r,
            // The response was dropped: its connection is gone.
            _ = done_tx.closed() => {
                debug!("the web client went away; the download stops");
                return;
            }
        };
        let _ = w.inner.shutdown().await;
        let r = match r {
            // A range read ends the download early on purpose, by failing the next write.
            Err(_) if w.refused => Ok(()),
            Err(e) => {
                debug!(error = %e, "a download through the web gateway failed");
                Err(e)
            }
            Ok(_) => Ok(()),
        };
        let _ = done_tx.send(r);
    });
    let mut feed = Feed {
        reader,
        done: Some(done_rx),
        left: len,
        to_end: skip + len == size,
    };
    // The first bytes, or the end.
    let first = match feed.next().await {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    let head = futures_util::stream::iter(first.map(Ok::<HttpBytes, std::io::Error>));
    let tail = futures_util::stream::unfold(Some(feed), |feed| async move {
        let mut feed = feed?;
        match feed.next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(feed))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    ranged(status, size, range, Body::from_stream(head.chain(tail)))
}

/// The reading end of a download through the gateway: its bytes in chunks, the last one
/// only once the download ended well if it reaches the file's end.
struct Feed {
    reader: tokio::io::DuplexStream,
    /// The download's outcome, until it has been taken.
    done: Option<tokio::sync::oneshot::Receiver<Result<(), ControlError>>>,
    /// Bytes still to come.
    left: u64,
    /// Whether the bytes run to the file's end (then the whole-file check comes after them).
    to_end: bool,
}

impl Feed {
    /// The next chunk; `None` at the end.
    async fn next(&mut self) -> Result<Option<HttpBytes>, ControlError> {
        if self.left == 0 {
            // A range that ends before the file's end is not waited for: dropping the
            // outcome's receiver stops the download.
            if self.to_end {
                self.outcome().await?;
            }
            return Ok(None);
        }
        let mut buf = vec![0u8; (64 * 1024).min(self.left as usize)];
        let n = self
            .reader
            .read(&mut buf)
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?;
        if n == 0 {
            self.outcome().await?;
            return Err(ControlError::Io(format!(
                "the download ended {} bytes short",
                self.left
            )));
        }
        buf.truncate(n);
        self.left -= n as u64;
        if self.left == 0 && self.to_end {
            self.outcome().await?;
        }
        Ok(Some(HttpBytes::from(buf)))
    }

    /// Waits for the download's outcome (once).
    async fn outcome(&mut self) -> Result<(), ControlError> {
        match self.done.take() {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(ControlError::Io("the download stopped".into()))),
        }
    }
}

/// `PUT /uri/CAP/PATH`.
pub async fn put_path(State(gw): State<Gateway>, Query(q): Args, uri: Uri, body: Body) -> Response {
    let (files, root, path) = match place(&gw, &uri) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let t = arg(&q, "t").unwrap_or("");
    if !matches!(t, "" | "uri" | "mkdir") {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("unknown t={t}: PUT knows t=uri and t=mkdir"),
        );
    }
    if t == "mkdir" {
        return match files.mkdir_p(&root, &path).await {
            Ok(cap) => text(StatusCode::OK, &cap),
            Err(e) => failed(&e),
        };
    }
    let (mutable, how) = match (wants_mutable(&q), replace(&q)) {
        (Ok(m), Ok(r)) => (m, r),
        (Err(m), _) | (_, Err(m)) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let Some((last, parent)) = path.split_last() else {
        return error(
            StatusCode::BAD_REQUEST,
            "PUT /uri/CAP needs a name below a directory (PUT /uri stores a new file)",
        );
    };
    let result = async {
        let dir = files.mkdir_p(&root, parent).await?;
        // Refused before the body is read and stored, not after.
        if !dir.parse::<Cap>().is_ok_and(|c| c.is_write()) {
            return Err(ControlError::ReadOnly(
                crate::dirnode::FsError::ReadOnly.to_string(),
            ));
        }
        let place = vec![last.clone()];
        let existing = match files.stat(&dir, &place).await {
            Ok(e) => Some(e),
            Err(ControlError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let existed = existing.is_some();
        match (&existing, how) {
            (Some(_), Replace::Never) => {
                return Err(ControlError::Exists(format!(
                    "'{last}' already exists, and replace=false"
                )))
            }
            (Some(e), Replace::OnlyFiles) if e.kind == "dir" => {
                return Err(ControlError::Exists(format!(
                    "'{last}' is a directory, and replace=only-files"
                )))
            }
            _ => {}
        }
        let replace = how != Replace::Never;
        // The check above answers at once; the directory update itself refuses too
        // (`replace`), if the name was taken meanwhile.
        let cap = match t {
            "uri" => {
                let cap = axum::body::to_bytes(body, MAX_CAP_BODY)
                    .await
                    .map_err(|_| {
                        ControlError::BadCap(format!(
                            "the body is not a cap of at most {MAX_CAP_BODY} bytes"
                        ))
                    })?;
                let cap = String::from_utf8_lossy(&cap).trim().to_string();
                files.link(&dir, &place, &cap, replace).await?;
                cap
            }
            _ => {
                // Over a mutable file held with write authority: a new version of it.
                let new_version = existing
                    .as_ref()
                    .is_some_and(|e| e.kind == "mutable" && e.rw_uri.is_some());
                let limit = if new_version {
                    Some(Limit::NewVersion)
                } else {
                    mutable.then_some(Limit::NewMutable)
                };
                let spool = spool(files, body, limit).await?;
                spool
                    .finish_with(
                        Reporter::Quiet,
                        Some((dir.clone(), place)),
                        mutable,
                        replace,
                    )
                    .await?
                    .cap
            }
        };
        Ok((existed, cap))
    }
    .await;
    match result {
        Ok((true, cap)) => text(StatusCode::OK, &cap),
        Ok((false, cap)) => text(StatusCode::CREATED, &cap),
        Err(e) => failed(&e),
    }
}

/// `POST /uri/CAP/PATH?t=mkdir[&name=NAME]`.
pub async fn post_path(State(gw): State<Gateway>, Query(q): Args, uri: Uri) -> Response {
    let (files, root, mut path) = match place(&gw, &uri) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if arg(&q, "t") != Some("mkdir") {
        return error(
            StatusCode::BAD_REQUEST,
            "POST /uri/CAP takes t=mkdir (files are stored with PUT)",
        );
    }
    if let Some(name) = arg(&q, "name") {
        path.push(name.to_string());
    }
    match files.mkdir_p(&root, &path).await {
        Ok(cap) => text(StatusCode::OK, &cap),
        Err(e) => failed(&e),
    }
}

/// `DELETE /uri/CAP/PATH`.
pub async fn delete_path(State(gw): State<Gateway>, uri: Uri) -> Response {
    let (files, root, path) = match place(&gw, &uri) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if path.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "DELETE needs a name below a directory",
        );
    }
    match files.unlink(&root, &path).await {
        Ok(cap) => text(StatusCode::OK, &cap),
        Err(e) => failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: &str, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
        parse_range(Some(h), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(range("bytes=0-3", 10), Ok(Some((0, 3))));
        assert_eq!(range("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(range("bytes=-4", 10), Ok(Some((6, 9))));
        assert_eq!(range("bytes=-40", 10), Ok(Some((0, 9))));
        assert_eq!(range("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(range("bytes=2-3, 5-6", 10), Ok(None));
        assert_eq!(range("bytes=10-", 10), Err(Unsatisfiable));
        assert_eq!(range("bytes=-0", 10), Err(Unsatisfiable));
        assert_eq!(range("bytes=0-", 0), Err(Unsatisfiable));
        assert_eq!(range("bytes=3-2", 10), Ok(None));
        assert_eq!(range("items=0-1", 10), Ok(None));
        assert_eq!(range("bytes=x-y", 10), Ok(None));
    }

    #[test]
    fn paths() {
        let u: Uri = "/uri/folio%3ADIR%3Aabc/a%20b/c/".parse().unwrap();
        let (cap, names) = split_uri_path(u.path()).ok().unwrap();
        assert_eq!(cap, "folio:DIR:abc");
        assert_eq!(names, ["a b", "c"]);
        let bad: Uri = "/uri/x//y".parse().unwrap();
        assert!(split_uri_path(bad.path()).is_err());
        let bad: Uri = "/uri/x/%ff".parse().unwrap();
        assert!(split_uri_path(bad.path()).is_err());
        let bad: Uri = "/uri/x/%4".parse().unwrap();
        assert!(split_uri_path(bad.path()).is_err());
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(percent_decode(&percent_encode("a b/ü:")).unwrap(), "a b/ü:");
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Some("a.TXT")), "text/plain; charset=utf-8");
        assert_eq!(content_type(Some("x.tar.gz")), "application/gzip");
        assert_eq!(content_type(Some("noext")), "application/octet-stream");
        assert_eq!(content_type(None), "application/octet-stream");
    }

    /// A feed over `data` whose download ends with `outcome`.
    async fn feed(data: &[u8], to_end: bool, outcome: Result<(), ControlError>) -> Feed {
        let (mut w, reader) = tokio::io::duplex(1024);
        w.write_all(data).await.unwrap();
        drop(w);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send(outcome).unwrap();
        Feed {
            reader,
            done: Some(rx),
            left: data.len() as u64,
            to_end,
        }
    }

    #[tokio::test]
    async fn a_download_failing_its_last_check_never_looks_complete() {
        let mut f = feed(b"all the bytes", true, Ok(())).await;
        assert_eq!(f.next().await.unwrap().unwrap().as_ref(), b"all the bytes");
        assert!(f.next().await.unwrap().is_none());
        // The bytes were all written, then the whole-file check failed: they are not sent.
        let bad = Err(ControlError::Io("ciphertext hash mismatch".into()));
        let mut f = feed(b"all the bytes", true, bad).await;
        let e = f.next().await.unwrap_err();
        assert!(e.to_string().contains("mismatch"), "{e}");
        // A range ending before the file's end is not held back for the download's end.
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut w, reader) = tokio::io::duplex(64);
        w.write_all(b"part").await.unwrap();
        let mut f = Feed {
            reader,
            done: Some(rx),
            left: 4,
            to_end: false,
        };
        assert_eq!(f.next().await.unwrap().unwrap().as_ref(), b"part");
        assert!(f.next().await.unwrap().is_none());
        // A download that ends short is an error, not a short 200.
        let mut f = feed(b"short", true, Ok(())).await;
        f.left = 10;
        assert_eq!(f.next().await.unwrap().unwrap().as_ref(), b"short");
        assert!(f.next().await.is_err());
    }

    #[test]
    fn yes_no_arguments_as_tahoe_spells_them() {
        let q = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        for yes in ["true", "T", "1", "on", "True"] {
            assert_eq!(flag(&q("save", yes), "save"), Ok(Some(true)), "{yes}");
        }
        for no in ["false", "f", "0", "OFF"] {
            assert_eq!(flag(&q("save", no), "save"), Ok(Some(false)), "{no}");
        }
        assert!(flag(&q("save", "yes please"), "save").is_err());
        assert_eq!(flag(&BTreeMap::new(), "save"), Ok(None));
        assert_eq!(replace(&BTreeMap::new()), Ok(Replace::Any));
        assert_eq!(replace(&q("replace", "only-files")), Ok(Replace::OnlyFiles));
        assert_eq!(replace(&q("replace", "0")), Ok(Replace::Never));
        assert!(replace(&q("replace", "sometimes")).is_err());
        assert_eq!(wants_mutable(&q("mutable", "on")), Ok(true));
    }

    #[tokio::test]
    async fn range_writer_sends_only_the_range() {
        let mut out = Vec::new();
        let mut w = RangeWriter::new(&mut out, 3, 4);
        w.write_all(b"ab").await.unwrap();
        assert!(!w.refused);
        w.write_all(b"cdefgh").await.unwrap_err();
        assert!(w.refused);
        assert_eq!(out, b"defg");
    }
}
