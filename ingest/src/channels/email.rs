//! Email over SMTP: the server a channel sends through (from an `smtp://` or `smtps://` URL),
//! and the messages it sends, one per alarm change or one digest for many.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::Url;

use fieldline_store::derived::Event;

/// An SMTP server to send through.
pub type SmtpServer = AsyncSmtpTransport<Tokio1Executor>;

/// Builds the server of an `smtp://host:port` URL (STARTTLS when the server offers it;
/// `?tls=required` insists on it) or `smtps://` (TLS from the first byte). With a user and
/// password, STARTTLS is required unless `?tls=opportunistic` says otherwise: a server whose
/// offer was stripped on the way would otherwise be sent the password in clear.
pub fn smtp_server(url: &str, timeout: Duration) -> Result<SmtpServer, String> {
    let parsed = Url::parse(url).map_err(|e| format!("the SMTP URL is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the SMTP URL has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let required = match parsed.query_pairs().find(|(k, _)| k == "tls") {
        None => !parsed.username().is_empty(),
        Some((_, v)) if v == "required" => true,
        Some((_, v)) if v == "opportunistic" => false,
        Some((_, v)) => {
            return Err(format!(
                "the SMTP URL's tls={v} is neither required nor opportunistic"
            ))
        }
    };
    let tls_parameters = || {
        TlsParameters::new(host.clone()).map_err(|e| format!("cannot set up TLS for {host}: {e}"))
    };
    let (tls, default_port) = match parsed.scheme() {
        "smtp" if required => (Tls::Required(tls_parameters()?), 587),
        "smtp" => (Tls::Opportunistic(tls_parameters()?), 25),
        "smtps" => (Tls::Wrapper(tls_parameters()?), 465),
        other => {
            return Err(format!(
                "the SMTP URL must start with smtp:// or smtps://, not {other}://"
            ))
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        .port(parsed.port().unwrap_or(default_port))
        .tls(tls)
        .timeout(Some(timeout));
    if !parsed.username().is_empty() {
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| "the SMTP URL's user or password is not UTF-8".to_owned())
        };
        builder = builder.credentials(Credentials::new(
            decode(parsed.username())?,
            decode(parsed.password().unwrap_or(""))?,
        ));
    }
    Ok(builder.build())
}

/// The URL as shown to people: without its password.
pub fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// One email: its subject and plain-text body.
#[derive(Debug, PartialEq)]
pub struct Mail {
    pub subject: String,
    pub body: String,
}

fn text<'a>(event: &'a Event, key: &str) -> &'a str {
    event.fields.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

/// A time as UTC and, when the channel has a time zone, as its local time.
fn when(ms: i64, tz: Option<&TimeZone>) -> String {
    let Ok(at) = Timestamp::from_millisecond(ms) else {
        return ms.to_string();
    };
    let utc = at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    match tz {
        Some(tz) => {
            let local = at.to_zoned(tz.clone());
            format!("{} ({utc})", local.strftime("%Y-%m-%d %H:%M:%S %Z"))
        }
        None => utc,
    }
}

/// What a change says in a sentence: "raised", "acknowledged by alice", …
fn change_phrase(event: &Event) -> String {
    let change = text(event, "change");
    match (change, text(event, "by")) {
        ("assigned", by) if !by.is_empty() => {
            format!("assigned to {} by {by}", text(event, "assignee"))
        }
        ("noted", by) if !by.is_empty() => format!("given a note by {by}"),
        (change, "") => change.to_owned(),
        (change, by) => format!("{change} by {by}"),
    }
}

fn reading(event: &Event) -> Option<String> {
    let value = event.fields.get("value")?;
    Some(match event.fields.get("metric").and_then(|m| m.as_str()) {
        Some(metric) => format!("{metric} = {value}"),
        None => value.to_string(),
    })
}

/// The email of one alarm change.
pub fn one(event: &Event, tz: Option<&TimeZone>) -> Mail {
    let severity = text(event, "severity");
    let name = text(event, "name");
    let phrase = change_phrase(event);
    let subject = format!(
        "[Fieldline] {} {name} on {}: {phrase}",
        severity.to_uppercase(),
        event.device
    );
    let mut body = format!(
        "Alarm {}, {name} on {}, was {phrase}.\n\n",
        event
            .fields
            .get("alarm")
            .map(|v| v.to_string())
            .unwrap_or_default(),
        event.device
    );
    let mut line = |label: &str, value: &str| {
        if !value.is_empty() {
            body.push_str(&format!("{label:<10}{value}\n"));
        }
    };
    line("Severity:", severity);
    line("State:", text(event, "state"));
    line("Reading:", reading(event).as_deref().unwrap_or(""));
    line(
        "Count:",
        &event
            .fields
            .get("count")
            .map(|v| v.to_string())
            .unwrap_or_default(),
    );
    line("Assignee:", text(event, "assignee"));
    line("Time:", &when(event.ts_ms, tz));
    line("Event:", &event.seq.to_string());
    Mail { subject, body }
}

/// One email for many alarm changes, oldest first.
pub fn digest(events: &[Event], tz: Option<&TimeZone>) -> Mail {
    let subject = format!("[Fieldline] {} alarm changes", events.len());
    let mut body = format!(
        "{} alarm changes, oldest first. Each line: time, severity, alarm, device, change.\n\n",
        events.len()
    );
    for event in events {
        let mut line = format!(
            "{}  {:<8}  alarm {} {} on {}: {}",
            when(event.ts_ms, tz),
            text(event, "severity"),
            event
                .fields
                .get("alarm")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            text(event, "name"),
            event.device,
            change_phrase(event)
        );
        if let Some(reading) = reading(event) {
            line.push_str(&format!(" ({reading})"));
        }
        body.push_str(&line);
        body.push_str(&format!("  [event {}]\n", event.seq));
    }
    Mail { subject, body }
}

/// Sends `mail` to every recipient in one message. Its `Message-ID` names the channel and the
/// newest event it carries, so a message sent again after a crash can be told for what it is.
pub async fn send(
    server: &SmtpServer,
    from: &Mailbox,
    to: &[Mailbox],
    mail: &Mail,
    message_id: String,
) -> Result<(), String> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(mail.subject.clone())
        .message_id(Some(message_id))
        .header(ContentType::TEXT_PLAIN);
    for recipient in to {
        builder = builder.to(recipient.clone());
    }
    let message = builder
        .body(mail.body.clone())
        .map_err(|e| format!("cannot build the message: {e}"))?;
    server
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("the SMTP server refused or failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_are_smtp_or_smtps_with_a_host() {
        let t = Duration::from_secs(1);
        assert!(smtp_server("smtp://user:p%40ss@mail.example.com:2525", t).is_ok());
        assert!(smtp_server("smtps://mail.example.com", t).is_ok());
        assert!(smtp_server("smtp://127.0.0.1:2525?tls=required", t).is_ok());
        for (url, reason) in [
            ("http://mail.example.com", "smtp:// or smtps://"),
            ("mail.example.com", "not a URL"),
            ("smtp://mail.example.com?tls=sometimes", "tls=sometimes"),
        ] {
            let Err(e) = smtp_server(url, t) else {
                panic!("{url} should be refused");
            };
            assert!(e.contains(reason), "{e} should say {reason}");
        }
        assert_eq!(
            redacted("smtp://user:secret@mail.example.com:2525"),
            "smtp://user:***@mail.example.com:2525"
        );
        assert_eq!(percent_decode("p%40ss").as_deref(), Some("p@ss"));
    }
}
