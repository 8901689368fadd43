//! Row ↔ struct mapping for PostgreSQL, and the column arrays that multi-row statements bind
//! (`unnest($1::…[], …)`: one round trip however many bindings a change touches).

use crate::store::binding::{q_from_column, q_to_column};
use crate::store::{Aor, Binding, ContactAddress, Pcontact, RegState};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

pub(crate) const BINDING_COLUMNS: &str = "id, ruid, username, domain, contact, received, path, \
     expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, \
     instance, reg_id, server_id, connection_id, keepalive, partition";

pub(crate) fn binding(row: &PgRow) -> Result<Binding, sqlx::Error> {
    Ok(Binding {
        id: row.try_get("id")?,
        ruid: row.try_get("ruid")?,
        aor: Aor::new(
            row.try_get::<String, _>("username")?,
            row.try_get::<String, _>("domain")?,
        ),
        contact: row.try_get("contact")?,
        received: row.try_get("received")?,
        path: row.try_get("path")?,
        expires: row.try_get("expires")?,
        q: q_from_column(f64::from(row.try_get::<f32, _>("q")?)),
        callid: row.try_get("callid")?,
        cseq: row.try_get("cseq")?,
        last_modified: row.try_get("last_modified")?,
        flags: row.try_get("flags")?,
        cflags: row.try_get("cflags")?,
        user_agent: row.try_get("user_agent")?,
        socket: row.try_get("socket")?,
        methods: row.try_get("methods")?,
        instance: row.try_get("instance")?,
        reg_id: row.try_get("reg_id")?,
        server_id: row.try_get("server_id")?,
        connection_id: row.try_get("connection_id")?,
        keepalive: row.try_get("keepalive")?,
        partition: row.try_get("partition")?,
    })
}

/// Bindings as parallel column arrays, in `BINDING_COLUMNS` order.
#[derive(Default)]
pub(crate) struct BindingArrays {
    pub ids: Vec<i64>,
    pub usernames: Vec<String>,
    pub domains: Vec<String>,
    /// The columns an insert and an update both write.
    pub fields: FieldArrays,
}

/// `ruid` to `partition`, as arrays.
#[derive(Default)]
pub(crate) struct FieldArrays {
    pub ruids: Vec<String>,
    pub contacts: Vec<String>,
    pub received: Vec<Option<String>>,
    pub paths: Vec<Option<String>>,
    pub expires: Vec<DateTime<Utc>>,
    pub qs: Vec<f32>,
    pub callids: Vec<String>,
    pub cseqs: Vec<i64>,
    pub last_modified: Vec<DateTime<Utc>>,
    pub flags: Vec<i32>,
    pub cflags: Vec<i32>,
    pub user_agents: Vec<Option<String>>,
    pub sockets: Vec<Option<String>>,
    pub methods: Vec<Option<i32>>,
    pub instances: Vec<Option<String>>,
    pub reg_ids: Vec<i32>,
    pub server_ids: Vec<i32>,
    pub connection_ids: Vec<i32>,
    pub keepalives: Vec<i32>,
    pub partitions: Vec<i32>,
}

impl BindingArrays {
    pub fn of<'a>(bindings: impl IntoIterator<Item = &'a Binding>) -> Self {
        let mut all = BindingArrays::default();
        for b in bindings {
            all.ids.push(b.id);
            all.usernames.push(b.aor.username.clone());
            all.domains.push(b.aor.domain.clone());
            let a = &mut all.fields;
            a.ruids.push(b.ruid.clone());
            a.contacts.push(b.contact.clone());
            a.received.push(b.received.clone());
            a.paths.push(b.path.clone());
            a.expires.push(b.expires);
            a.qs.push(q_to_column(b.q) as f32);
            a.callids.push(b.callid.clone());
            a.cseqs.push(b.cseq);
            a.last_modified.push(b.last_modified);
            a.flags.push(b.flags);
            a.cflags.push(b.cflags);
            a.user_agents.push(b.user_agent.clone());
            a.sockets.push(b.socket.clone());
            a.methods.push(b.methods);
            a.instances.push(b.instance.clone());
            a.reg_ids.push(b.reg_id);
            a.server_ids.push(b.server_id);
            a.connection_ids.push(b.connection_id);
            a.keepalives.push(b.keepalive);
            a.partitions.push(b.partition);
        }
        all
    }
}

pub(crate) const PCONTACT_COLUMNS: &str = "id, aor, host, port, protocol, received, \
     received_port, received_proto, path, rinstance, reg_state, expires, service_routes, socket, \
     public_ids, claimed_by, claimed_until, publish_attempts, next_publish_at, published_ids, \
     last_modified";

pub(crate) fn pcontact(row: &PgRow) -> Result<Pcontact, sqlx::Error> {
    let port: i32 = row.try_get("port")?;
    Ok(Pcontact {
        id: row.try_get("id")?,
        aor: row.try_get("aor")?,
        address: ContactAddress {
            host: row.try_get("host")?,
            port: u16::try_from(port).unwrap_or(5060),
            protocol: row.try_get("protocol")?,
        },
        received: row.try_get("received")?,
        received_port: row.try_get("received_port")?,
        received_proto: row.try_get("received_proto")?,
        path: row.try_get("path")?,
        rinstance: row.try_get("rinstance")?,
        reg_state: RegState::from_column(row.try_get("reg_state")?),
        expires: row.try_get("expires")?,
        service_routes: row.try_get("service_routes")?,
        socket: row.try_get("socket")?,
        public_ids: row.try_get("public_ids")?,
        claimed_by: row.try_get("claimed_by")?,
        claimed_until: row.try_get("claimed_until")?,
        publish_attempts: row.try_get("publish_attempts")?,
        next_publish_at: row.try_get("next_publish_at")?,
        published_ids: row.try_get("published_ids")?,
        last_modified: row.try_get("last_modified")?,
    })
}
