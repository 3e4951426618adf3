//! The gateway end to end, in one test binary (one link instead of ten):
//! keygate in this process in front of the echo upstream, with the provider
//! from `dev/idp`, nginx for forward-auth and Chromium for the browser flow,
//! all from `keygate-testkit`. Run one area with its module name, e.g.
//! `cargo test -p keygate-proxy --test gateway jwt::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod cors;
mod dpop;
mod forward_auth;
mod headers;
mod hygiene;
mod jwt;
mod limits;
mod paths;
mod provider;
mod proxy;
mod rules;
mod sessions;
mod token_exchange;
mod upstreams;

/// `n` concurrent GETs of `url` with one header (a credential): each
/// one's status and how long it took.
pub async fn burst(url: &str, header: (&str, &str), n: usize) -> Vec<(u16, std::time::Duration)> {
    let http = reqwest::Client::new();
    let asked: Vec<_> = (0..n)
        .map(|_| {
            let request = http.get(url).header(header.0, header.1);
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let resp = request.send().await.unwrap();
                (resp.status().as_u16(), start.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for asked in asked {
        answers.push(asked.await.unwrap());
    }
    answers
}

/// Checks rounds of 20 concurrent requests with one credential while the
/// provider hangs (the breaker already open): every one 503, and at most
/// one (the probe) waits for the provider.
pub async fn one_probe_per_round(url: &str, header: (&str, &str)) {
    for round in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let answers = burst(url, header, 20).await;
        assert!(
            answers.iter().all(|(status, _)| *status == 503),
            "round {round}: {answers:?}"
        );
        let slow = answers
            .iter()
            .filter(|(_, took)| *took > std::time::Duration::from_millis(500))
            .count();
        assert!(
            slow <= 1,
            "round {round}: {slow} of 20 waited for the provider"
        );
    }
}
