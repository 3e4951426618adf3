//! The self-service key page at `/oauth/keys` for logged-in browser users:
//! server-rendered HTML that works without JavaScript. Users list their
//! keys, create a personal key (the provider's device authorization, which
//! asks for `offline_access` when personal keys are backed by an offline
//! session), renew and revoke. Forms are POSTs protected by
//! the session's Origin check (see `pipeline::csrf_check`).

use crate::gateway::Gateway;
use crate::respond::{Body, Refusal, Refused};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use keygate_core::Identity;
use keygate_core::keys::Backing;
use keygate_keys::{ApiKeys, CreatedKey, DeviceError, KeyView};
use keygate_store::KeyFilter;
use std::time::{Duration, UNIX_EPOCH};

/// Lifetimes offered in the forms.
const LIFETIMES: &[(&str, &str)] = &[
    ("7d", "7 days"),
    ("14d", "14 days"),
    ("30d", "30 days"),
    ("90d", "90 days"),
];

/// The page: the user's keys and the form to create one.
pub async fn list(
    keys: &ApiKeys,
    identity: &Identity,
    notice: Option<&str>,
) -> Result<Response<Body>, Refused> {
    let filter = KeyFilter {
        owner: Some(identity.subject.clone()),
        kind: None,
        include_revoked: false,
        limit: Some(500),
    };
    let list = keys.list(&filter).await?;
    let mut rows = String::new();
    for k in &list {
        rows.push_str(&row(k));
    }
    if list.is_empty() {
        rows.push_str("<tr><td colspan=\"6\" class=\"muted\">You have no API keys yet.</td></tr>");
    }
    let name = esc(identity.username.as_deref().unwrap_or(&identity.subject));
    let notice = notice
        .map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", esc(n)))
        .unwrap_or_default();
    let body = format!(
        "<h1>API keys</h1><p class=\"muted\">Signed in as <strong>{name}</strong>. A personal key acts with your own, current roles; \
         send it as <code>X-API-Key</code>, <code>Authorization: Bearer</code> or the password of HTTP Basic.</p>{notice}\
         <table><caption class=\"sr\">Your keys</caption><thead><tr><th scope=\"col\">Key</th><th scope=\"col\">Description</th>\
         <th scope=\"col\">Created</th><th scope=\"col\">Expires</th><th scope=\"col\">Last used</th><th scope=\"col\">Actions</th></tr></thead>\
         <tbody>{rows}</tbody></table>\
         <h2>Create a personal key</h2>\
         <form method=\"post\" action=\"/oauth/keys/new\" class=\"create\">\
         <label for=\"description\">Description</label><input id=\"description\" name=\"description\" maxlength=\"200\" required placeholder=\"e.g. notebook on my laptop\">\
         <label for=\"expires_in\">Expires in</label><select id=\"expires_in\" name=\"expires_in\">{}</select>\
         <button type=\"submit\">Create key</button></form>",
        options()
    );
    Ok(page("API keys", &body))
}

fn row(k: &KeyView) -> String {
    let actions = if k.status == "active" || k.status == "expired" {
        format!(
            "<form method=\"post\" action=\"/oauth/keys/{id}/renew\" class=\"inline\"><label class=\"sr\" for=\"renew-{id}\">New lifetime</label>\
             <select id=\"renew-{id}\" name=\"expires_in\">{opts}</select><button type=\"submit\">Renew</button></form>\
             <form method=\"post\" action=\"/oauth/keys/{id}/revoke\" class=\"inline\"><button type=\"submit\" class=\"danger\">Revoke</button></form>",
            id = esc(&k.id),
            opts = options()
        )
    } else {
        String::new()
    };
    format!(
        "<tr><td><code>{}…</code> <span class=\"badge {}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&k.prefix),
        esc(k.status),
        esc(k.status),
        esc(&k.description),
        date(Some(k.created_at)),
        date(k.expires_at),
        date(k.last_used_at),
        actions
    )
}

fn options() -> String {
    LIFETIMES
        .iter()
        .map(|(v, l)| {
            format!(
                "<option value=\"{v}\"{}>{l}</option>",
                if *v == "14d" { " selected" } else { "" }
            )
        })
        .collect()
}

/// Starts the provider's device authorization and shows where to approve.
pub async fn create(keys: &ApiKeys, form: &[(String, String)]) -> Result<Response<Body>, Refused> {
    let description = field(form, "description").unwrap_or_default();
    let expires_in = field(form, "expires_in");
    let started = keys
        .start_device(description.to_owned(), expires_in)
        .await?;
    let flow = started["flow_id"].as_str().unwrap_or_default();
    let url = started["verification_uri_complete"]
        .as_str()
        .or(started["verification_uri"].as_str())
        .unwrap_or("");
    let code = started["user_code"].as_str().unwrap_or("");
    Ok(page(
        "Approve your new key",
        &approve_body(keys, flow, url, code, None),
    ))
}

fn approve_body(keys: &ApiKeys, flow: &str, url: &str, code: &str, notice: Option<&str>) -> String {
    let notice = notice
        .map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", esc(n)))
        .unwrap_or_default();
    let approve = match keys.personal_backing() {
        Backing::OfflineSession => {
            "Approve. The provider asks for offline access: that is what lets the key work while you are away."
        }
        _ => "Approve. The key then acts as you, with your roles at the time of each use.",
    };
    format!(
        "<h1>Approve your new key</h1>{notice}<ol><li>Open <a href=\"{u}\" target=\"_blank\" rel=\"noopener noreferrer\" id=\"approve\">the provider's approval page</a> \
         and check that it shows the code <strong class=\"code\">{c}</strong>.</li><li>{approve}</li><li>Come back and show the key.</li></ol>\
         <form method=\"post\" action=\"/oauth/keys/new/finish\"><input type=\"hidden\" name=\"flow_id\" value=\"{f}\">\
         <input type=\"hidden\" name=\"verification_uri\" value=\"{u}\"><input type=\"hidden\" name=\"user_code\" value=\"{c}\">\
         <button type=\"submit\" id=\"finish\">I have approved — show my key</button></form><p><a href=\"/oauth/keys\">Cancel</a></p>",
        u = esc(url),
        c = esc(code),
        f = esc(flow)
    )
}

/// Polls the device authorization; shows the key once when approved.
pub async fn finish(
    gw: &Gateway,
    keys: &ApiKeys,
    form: &[(String, String)],
) -> Result<Response<Body>, Refused> {
    let flow = field(form, "flow_id").unwrap_or_default();
    match keys.poll_device(flow, &gw.verifier).await {
        Ok(Some(created)) => Ok(page("Your new key", &shown_once(&created))),
        Ok(None) | Err(DeviceError::SlowDown(_)) => {
            let url = field(form, "verification_uri").unwrap_or_default();
            let code = field(form, "user_code").unwrap_or_default();
            Ok(page(
                "Approve your new key",
                &approve_body(
                    keys,
                    flow,
                    url,
                    code,
                    Some("Not approved yet: approve at the provider, then try again."),
                ),
            ))
        }
        Err(
            e @ (DeviceError::Denied
            | DeviceError::Expired
            | DeviceError::Unknown
            | DeviceError::NotLinked(_)),
        ) => {
            let body = format!(
                "<h1>No key was created</h1><p class=\"notice\" role=\"alert\">{}</p><p><a href=\"/oauth/keys\">Back to your keys</a></p>",
                esc(&e.to_string())
            );
            Ok(page("No key was created", &body))
        }
        Err(e) => {
            tracing::warn!(error = %e, "device flow failed");
            Err(Refused::from(Refusal::Unavailable(
                "the OpenID provider could not complete the approval".into(),
            )))
        }
    }
}

fn shown_once(created: &CreatedKey) -> String {
    let key = esc(created.key.expose());
    format!(
        "<h1>Your new key</h1><p class=\"notice\" role=\"status\">This is the only time the key is shown. Store it now, e.g. in your password manager.</p>\
         <div class=\"secret\"><code id=\"key\">{key}</code> <button type=\"button\" id=\"copy\" data-copy=\"key\">Copy</button></div>\
         <h2>Try it</h2><pre><code id=\"curl\">curl -H \"X-API-Key: {key}\" https://YOUR-GATEWAY/</code></pre>\
         <p>Expires {}. <a href=\"/oauth/keys\">Back to your keys</a></p>\
         <script>document.getElementById('copy').addEventListener('click',function(){{navigator.clipboard&&navigator.clipboard.writeText(document.getElementById('key').textContent);this.textContent='Copied';}});</script>",
        date(created.expires_at)
    )
}

/// Reads `application/x-www-form-urlencoded` pairs.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    keygate_core::encoding::form_pairs(&String::from_utf8_lossy(body))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn date(t: Option<i64>) -> String {
    match t {
        None => "never".into(),
        Some(secs) => {
            let full = humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
            )
            .to_string();
            full.replace('T', " ").trim_end_matches('Z').to_owned() + " UTC"
        }
    }
}

/// A redirect after a form POST (303: the browser GETs the page again).
pub fn see_other(location: &str) -> Response<Body> {
    let mut resp = crate::respond::empty(StatusCode::SEE_OTHER);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

const STYLE: &str = "body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}\
main{max-width:980px;margin:40px auto;padding:32px;background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08)}\
h1{font-size:1.6rem;margin:0 0 .5rem}h2{font-size:1.2rem;margin-top:2rem}.muted{color:#57606a}\
table{width:100%;border-collapse:collapse;margin-top:1rem}th,td{text-align:left;padding:.6rem .5rem;border-bottom:1px solid #e5e7eb;vertical-align:middle}\
th{font-size:.85rem;text-transform:uppercase;letter-spacing:.03em;color:#57606a}\
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}\
.badge{font-size:.75rem;padding:.1rem .5rem;border-radius:999px;background:#e7f5ec;color:#116329}.badge.expired{background:#fff4e5;color:#9a6700}.badge.revoked{background:#ffebe9;color:#a40e26}\
form.inline{display:inline-flex;gap:.4rem;margin-right:.5rem}form.create{display:grid;grid-template-columns:max-content 1fr;gap:.6rem 1rem;max-width:560px;align-items:center}\
form.create button{grid-column:2;justify-self:start}input,select{font:inherit;padding:.4rem .6rem;border:1px solid #d0d7de;border-radius:6px}\
button{font:inherit;padding:.4rem .9rem;border-radius:6px;border:1px solid #1f6feb;background:#1f6feb;color:#fff;cursor:pointer}\
button:focus,a:focus,input:focus,select:focus{outline:3px solid #80b3ff;outline-offset:1px}\
button.danger{background:#fff;color:#cf222e;border-color:#cf222e}.notice{background:#ddf4ff;border:1px solid #54aeff;padding:.6rem .9rem;border-radius:6px}\
.secret{display:flex;gap:.6rem;align-items:center;background:#f6f8fa;border:1px dashed #8c959f;padding:.8rem;border-radius:8px;word-break:break-all}\
pre{background:#f6f8fa;padding:.8rem;border-radius:8px;overflow:auto}.code{font-size:1.2rem;letter-spacing:.1em}\
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}";

fn page(title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · keygate</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        esc(title)
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(html))));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    // Not `no-referrer`: with it browsers send `Origin: null` on the page's
    // own form posts, which the CSRF check (rightly) refuses.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_parses_forms() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        let form = parse_form(b"description=my+laptop+%26+more&expires_in=14d");
        assert_eq!(field(&form, "description"), Some("my laptop & more"));
        assert_eq!(field(&form, "expires_in"), Some("14d"));
    }
}
