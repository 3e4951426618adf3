//! A tiny cookie-keeping "browser" over reqwest that fills in the provider's
//! pages (login, device confirmation) as a user would.

use std::collections::HashMap;

pub struct Browser {
    http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

pub struct Page {
    pub url: reqwest::Url,
    pub status: u16,
    pub body: String,
}

impl Default for Browser {
    fn default() -> Browser {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: crate::client(),
            cookies: HashMap::new(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        self.go(reqwest::Url::parse(url).unwrap(), None).await
    }

    /// Sends the request, then follows redirects (as GETs), keeping cookies.
    pub async fn go(
        &mut self,
        mut url: reqwest::Url,
        mut form: Option<Vec<(String, String)>>,
    ) -> Page {
        for _ in 0..20 {
            let mut req = match &form {
                Some(fields) => self.http.post(url.clone()).form(fields),
                None => self.http.get(url.clone()),
            };
            if !self.cookies.is_empty() {
                let header: Vec<String> = self
                    .cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                req = req.header("cookie", header.join("; "));
            }
            let resp = req.send().await.unwrap();
            for value in resp.headers().get_all("set-cookie") {
                self.store_cookie(value.to_str().unwrap());
            }
            let status = resp.status().as_u16();
            if resp.status().is_redirection() {
                let location = resp.headers()["location"].to_str().unwrap().to_owned();
                url = url.join(&location).unwrap();
                form = None;
                continue;
            }
            let body = resp.text().await.unwrap();
            return Page { url, status, body };
        }
        panic!("too many redirects");
    }

    fn store_cookie(&mut self, header: &str) {
        let mut parts = header.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let expired = parts.any(|attr| {
            let attr = attr.trim().to_ascii_lowercase();
            attr.starts_with("expires=thu, 01 jan 1970") || attr == "max-age=0"
        });
        if expired || value.is_empty() {
            self.cookies.remove(name);
        } else {
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
    }
}

/// Follows a login from `base` + `start` as `user`, filling in the
/// provider's forms, until the browser is back on `base` (off `/oauth/`).
pub async fn login_at(browser: &mut Browser, base: &str, start: &str, user: &str) -> Page {
    let mut page = browser.get(&format!("{base}{start}")).await;
    for _ in 0..10 {
        if page.url.as_str().starts_with(base) && !page.url.path().starts_with("/oauth/") {
            return page;
        }
        let Some((action, mut fields)) = first_form(&page.body) else {
            panic!(
                "no form at {} (HTTP {}): {}",
                page.url, page.status, page.body
            );
        };
        for (name, value) in fields.iter_mut() {
            if name == "username" || name == "password" {
                *value = user.to_owned();
            }
        }
        let target = match action {
            Some(a) => page.url.join(&a).unwrap(),
            None => page.url.clone(),
        };
        page = browser.go(target, Some(fields)).await;
    }
    panic!(
        "login did not come back to keygate: {} {}",
        page.url, page.body
    );
}

/// The first form of `html`: its action and its inputs' names and values.
/// A form's action and its fields.
type Form = (Option<String>, Vec<(String, String)>);

pub fn first_form(html: &str) -> Option<Form> {
    let start = html.find("<form")?;
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |e| start + e);
    let form = &html[start..end];
    let tag_end = form.find('>')?;
    let action = attr(&form[..tag_end], "action");
    let mut fields = Vec::new();
    let mut rest = &form[tag_end..];
    while let Some(i) = rest.find("<input") {
        rest = &rest[i..];
        let close = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..close];
        if let Some(name) = attr(tag, "name") {
            fields.push((name, attr(tag, "value").unwrap_or_default()));
        }
        rest = &rest[close..];
    }
    Some((action, fields))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Acts as `user` at `verification_uri_complete`: submits each page's form
/// (user code, confirmation — or abort when `approve` is false —, login)
/// until the provider shows its success page or refuses.
pub async fn act_as_user(uri: &str, user: &str, approve: bool) -> Page {
    let mut browser = Browser::new();
    let mut page = browser.get(uri).await;
    for _ in 0..10 {
        if page.body.contains("Sign-in Success")
            || page.body.contains("interrupted")
            || page.body.contains("Device Login Successful")
        {
            return page;
        }
        let Some((action, mut fields)) = first_form(&page.body) else {
            panic!("no form on the page (HTTP {}): {}", page.status, page.body);
        };
        for (name, value) in fields.iter_mut() {
            match name.as_str() {
                "username" => *value = user.to_owned(),
                "password" => *value = user.to_owned(),
                _ => {}
            }
        }
        // Keycloak's consent form has two submit inputs, `accept` and `cancel`.
        if fields.iter().any(|(n, _)| n == "accept") {
            fields.retain(|(n, _)| n != if approve { "cancel" } else { "accept" });
        }
        if !approve && fields.iter().any(|(n, _)| n == "confirm") {
            fields.retain(|(n, _)| n != "confirm");
            fields.push(("abort".into(), "yes".into()));
        }
        let target = match action {
            Some(a) => page.url.join(&a).unwrap(),
            None => page.url.clone(),
        };
        page = browser.go(target, Some(fields)).await;
    }
    panic!("the device flow pages did not finish: {}", page.body);
}
