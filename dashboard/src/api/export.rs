//! Exports that stream: a device's track as CSV, GPX or GeoJSON, its telemetry as CSV. Rows
//! are read a page at a time by time (keyset), written out, and dropped, so a year of rows
//! never sits in memory.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fieldline_store::time_format::format_ms;
use fieldline_store::{Range, TelemetryPoint, TrackPoint};
use fieldline_store::{Store, StoreError};

use crate::paging::TimePager;

/// Something read page by page; `None` at the end.
pub trait Pages: Send + 'static {
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, StoreError>> + Send;
}

/// A response streaming `pages`, as a download named `filename`. A storage error after the
/// first bytes can only cut the body short; it is logged.
pub fn download(pages: impl Pages, content_type: &'static str, filename: String) -> Response {
    let mut response = streamed(pages, content_type);
    if let Ok(value) =
        header::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// A response streaming `pages` as they are read.
pub fn streamed(pages: impl Pages, content_type: &'static str) -> Response {
    let stream = futures_util::stream::unfold(Some(pages), |pages| async move {
        let mut pages = pages?;
        match pages.next().await {
            Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), Some(pages))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "export cut short by a storage error");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
        }
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A track as the JSON array `GET .../track` answers, at most `limit` fixes, read and written
/// a page at a time: the first bytes leave while later pages are still being read.
pub struct JsonTrack {
    pager: TimePager<TrackPoint>,
    left: u64,
    started: bool,
    done: bool,
}

impl JsonTrack {
    pub fn new(store: Arc<dyn Store>, device: &str, range: Range) -> Self {
        Self {
            pager: TimePager::new(store, device, range.from_ms, range.to_ms)
                .page_rows(20_000)
                .read_ahead(),
            left: u64::from(range.limit),
            started: false,
            done: false,
        }
    }
}

impl Pages for JsonTrack {
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let rows = match self.left {
            0 => None,
            _ => self.pager.next().await?,
        };
        let mut out = Vec::new();
        let Some(mut rows) = rows else {
            self.done = true;
            out.extend_from_slice(if self.started { b"]" } else { b"[]" });
            return Ok(Some(out.into()));
        };
        rows.truncate(self.left.min(rows.len() as u64) as usize);
        self.left -= rows.len() as u64;
        out.reserve(rows.len() * 140);
        for p in &rows {
            out.push(if self.started { b',' } else { b'[' });
            self.started = true;
            // Plain numbers and strings: serializing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, p);
        }
        Ok(Some(out.into()))
    }
}

/// `{stem}-{from}-{to}.{ext}` with compact UTC times: device ids need no quoting. An open
/// range is named by the years 1970 and 9999.
pub fn filename(stem: &str, from_ms: i64, to_ms: i64, ext: &str) -> String {
    const LAST_NAMED_MS: i64 = 253_402_300_799_999;
    let compact = |ms: i64| {
        format_ms(ms.clamp(0, LAST_NAMED_MS))
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
    };
    format!("{stem}-{}-{}.{ext}", compact(from_ms), compact(to_ms))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TrackFormat {
    Csv,
    Gpx,
    GeoJson,
}

impl TrackFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            TrackFormat::Csv => "text/csv",
            TrackFormat::Gpx => "application/gpx+xml",
            TrackFormat::GeoJson => "application/geo+json",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            TrackFormat::Csv => "csv",
            TrackFormat::Gpx => "gpx",
            TrackFormat::GeoJson => "geojson",
        }
    }

    pub fn head(self, device: &str) -> String {
        match self {
            TrackFormat::Csv => "ts,seq,lat,lon,speed,heading,alt,accuracy\n".to_owned(),
            // Device ids are [A-Za-z0-9_.-] and times RFC 3339: nothing needs XML escaping.
            TrackFormat::Gpx => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\" creator=\"fieldline\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n<trk><name>{device}</name><trkseg>\n"
            ),
            TrackFormat::GeoJson => "{\"type\":\"FeatureCollection\",\"features\":[{\"type\":\"Feature\",\"geometry\":{\"type\":\"LineString\",\"coordinates\":[".to_owned(),
        }
    }

    /// One fix; `first` says whether one came before (for the separators JSON needs).
    pub fn row(self, out: &mut String, p: &TrackPoint, first: bool) {
        use std::fmt::Write;
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let l = &p.location;
        match self {
            TrackFormat::Csv => {
                let seq = p.seq.map(|s| s.to_string()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{},{seq},{},{},{},{},{},{}",
                    p.ts,
                    l.lat,
                    l.lon,
                    opt(l.speed),
                    opt(l.heading),
                    opt(l.alt),
                    opt(l.accuracy)
                );
            }
            TrackFormat::Gpx => {
                let _ = write!(out, "<trkpt lat=\"{}\" lon=\"{}\">", l.lat, l.lon);
                if let Some(alt) = l.alt {
                    let _ = write!(out, "<ele>{alt}</ele>");
                }
                let _ = writeln!(out, "<time>{}</time></trkpt>", p.ts);
            }
            TrackFormat::GeoJson => {
                let _ = write!(out, "{}[{},{}]", if first { "" } else { "," }, l.lon, l.lat);
            }
        }
    }
}

/// A track export: the head, the fixes page by page, the tail. GeoJSON reads the track
/// twice, once for the line's coordinates and once for their times, to keep memory flat.
pub struct TrackExport {
    pager: TimePager<TrackPoint>,
    again: TimePager<TrackPoint>,
    format: TrackFormat,
    device: String,
    stage: Stage,
    wrote_any: bool,
}

#[derive(PartialEq, Eq)]
enum Stage {
    Head,
    Rows,
    Times,
    Done,
}

impl TrackExport {
    pub fn new(store: Arc<dyn Store>, device: &str, range: Range, format: TrackFormat) -> Self {
        Self {
            pager: TimePager::new(store.clone(), device, range.from_ms, range.to_ms).read_ahead(),
            again: TimePager::new(store, device, range.from_ms, range.to_ms),
            format,
            device: device.to_owned(),
            stage: Stage::Head,
            wrote_any: false,
        }
    }
}

impl Pages for TrackExport {
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        match self.stage {
            Stage::Head => {
                self.stage = Stage::Rows;
                Ok(Some(self.format.head(&self.device).into()))
            }
            Stage::Rows => match self.pager.next().await? {
                Some(rows) => {
                    let mut out = String::with_capacity(rows.len() * 64);
                    for p in &rows {
                        self.format.row(&mut out, p, !self.wrote_any);
                        self.wrote_any = true;
                    }
                    Ok(Some(out.into()))
                }
                None => {
                    self.wrote_any = false;
                    Ok(Some(match self.format {
                        TrackFormat::Csv => {
                            self.stage = Stage::Done;
                            Bytes::new()
                        }
                        TrackFormat::Gpx => {
                            self.stage = Stage::Done;
                            "</trkseg></trk>\n</gpx>\n".into()
                        }
                        TrackFormat::GeoJson => {
                            self.stage = Stage::Times;
                            format!(
                                "]}},\"properties\":{{\"device\":\"{}\",\"times\":[",
                                self.device
                            )
                            .into()
                        }
                    }))
                }
            },
            Stage::Times => match self.again.next().await? {
                Some(rows) => {
                    let mut out = String::with_capacity(rows.len() * 28);
                    for p in &rows {
                        if self.wrote_any {
                            out.push(',');
                        }
                        out.push('"');
                        out.push_str(&p.ts);
                        out.push('"');
                        self.wrote_any = true;
                    }
                    Ok(Some(out.into()))
                }
                None => {
                    self.stage = Stage::Done;
                    Ok(Some("]}}]}\n".into()))
                }
            },
            Stage::Done => Ok(None),
        }
    }
}

/// Raw telemetry as CSV: `ts,seq,metric,value`.
pub struct TelemetryExport {
    pager: TimePager<TelemetryPoint>,
    head: bool,
}

impl TelemetryExport {
    pub fn new(store: Arc<dyn Store>, device: &str, metric: Option<&str>, range: Range) -> Self {
        Self {
            pager: TimePager::new(store, device, range.from_ms, range.to_ms)
                .metric(metric)
                .read_ahead(),
            head: true,
        }
    }
}

impl Pages for TelemetryExport {
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        if std::mem::take(&mut self.head) {
            return Ok(Some("ts,seq,metric,value\n".into()));
        }
        let Some(rows) = self.pager.next().await? else {
            return Ok(None);
        };
        use std::fmt::Write;
        let mut out = String::with_capacity(rows.len() * 48);
        for p in &rows {
            let seq = p.seq.map(|s| s.to_string()).unwrap_or_default();
            let _ = writeln!(out, "{},{seq},{},{}", p.ts, p.metric, p.value);
        }
        Ok(Some(out.into()))
    }
}
