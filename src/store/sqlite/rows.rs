//! Row ↔ struct mapping for SQLite, where times are INTEGER Unix seconds.

use super::from_secs;
use crate::store::binding::q_from_column;
use crate::store::{Aor, Binding, ContactAddress, Pcontact, RegState};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

pub(crate) const BINDING_COLUMNS: &str = "id, ruid, username, domain, contact, received, path, \
     expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, \
     instance, reg_id, server_id, connection_id, keepalive, partition";

pub(crate) fn binding(row: &SqliteRow) -> Result<Binding, sqlx::Error> {
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
        expires: from_secs(row.try_get("expires")?)?,
        q: q_from_column(row.try_get::<f64, _>("q")?),
        callid: row.try_get("callid")?,
        cseq: row.try_get("cseq")?,
        last_modified: from_secs(row.try_get("last_modified")?)?,
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

pub(crate) const PCONTACT_COLUMNS: &str = "id, aor, host, port, protocol, received, \
     received_port, received_proto, path, rinstance, reg_state, expires, service_routes, socket, \
     public_ids, claimed_by, claimed_until, publish_attempts, next_publish_at, published_ids, \
     last_modified";

pub(crate) fn pcontact(row: &SqliteRow) -> Result<Pcontact, sqlx::Error> {
    let port: i64 = row.try_get("port")?;
    let optional_time = |name: &str| -> Result<_, sqlx::Error> {
        row.try_get::<Option<i64>, _>(name)?
            .map(from_secs)
            .transpose()
    };
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
        expires: from_secs(row.try_get("expires")?)?,
        service_routes: row.try_get("service_routes")?,
        socket: row.try_get("socket")?,
        public_ids: row.try_get("public_ids")?,
        claimed_by: row.try_get("claimed_by")?,
        claimed_until: optional_time("claimed_until")?,
        publish_attempts: row.try_get("publish_attempts")?,
        next_publish_at: optional_time("next_publish_at")?,
        published_ids: row.try_get("published_ids")?,
        last_modified: from_secs(row.try_get("last_modified")?)?,
    })
}
