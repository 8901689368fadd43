//! A digest client for the tests (SPEC A): reads our 401's challenges and answers them the way
//! a UA does (RFC 7616 §3.4, qop=auth), and creates users the way `users add` does.

use super::TestDb;
use super::sip::Reply;
use registrar::auth::digest::{QopAuth, expected_response, ha1};
use registrar::auth::{Algorithm, credentials_for};
use registrar::store::Aor;

/// One `WWW-Authenticate: Digest …` of a 401.
#[derive(Clone, Debug)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    pub qop: Option<String>,
    pub stale: bool,
}

impl Challenge {
    /// Every challenge of a reply, in order.
    pub fn all(reply: &Reply) -> Vec<Challenge> {
        reply
            .headers("WWW-Authenticate")
            .iter()
            .map(|v| Challenge::parse(v))
            .collect()
    }

    pub fn first(reply: &Reply) -> Challenge {
        assert_eq!(reply.code, 401, "expected a challenge: {}", reply.text);
        Challenge::all(reply).remove(0)
    }

    fn parse(value: &str) -> Challenge {
        let rest = value.strip_prefix("Digest ").expect("a Digest challenge");
        let mut params = Vec::new();
        for part in rest.split(", ") {
            let (name, v) = part.split_once('=').expect("name=value");
            params.push((name.trim().to_string(), v.trim_matches('"').to_string()));
        }
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        Challenge {
            realm: get("realm").expect("realm"),
            nonce: get("nonce").expect("nonce"),
            opaque: get("opaque"),
            algorithm: Algorithm::parse(&get("algorithm").unwrap_or("MD5".into()))
                .expect("known algorithm"),
            qop: get("qop"),
            stale: get("stale").as_deref() == Some("true"),
        }
    }

    /// The `Authorization` header line answering this challenge for `REGISTER uri`.
    pub fn answer(&self, user: &str, password: &str, uri: &str, nc: u32) -> String {
        self.answer_for("REGISTER", user, password, uri, nc)
    }

    /// The same for a request of another method (a SUBSCRIBE, SPEC E1).
    pub fn answer_for(
        &self,
        method: &str,
        user: &str,
        password: &str,
        uri: &str,
        nc: u32,
    ) -> String {
        let h = ha1(self.algorithm, user, &self.realm, password);
        let qop = QopAuth {
            nc: format!("{nc:08x}"),
            cnonce: format!("c{nc}x"),
        };
        let response = expected_response(self.algorithm, &h, &self.nonce, method, uri, Some(&qop));
        let opaque = self
            .opaque
            .as_ref()
            .map(|o| format!(", opaque=\"{o}\""))
            .unwrap_or_default();
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", \
             uri=\"{uri}\", response=\"{response}\", algorithm={}, qop=auth, nc={}, \
             cnonce=\"{}\"{opaque}",
            self.realm,
            self.nonce,
            self.algorithm.name(),
            qop.nc,
            qop.cnonce
        )
    }
}

/// Creates a user as `registrar users add` does.
pub async fn add_user(db: &TestDb, user: &str, domain: &str, password: &str) {
    let created = db
        .store
        .add_subscriber(
            &Aor::new(user, domain),
            &credentials_for(user, domain, password),
        )
        .await
        .expect("add subscriber");
    assert!(created, "{user}@{domain} is new");
}
