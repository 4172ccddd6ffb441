//! The connection budget: how many writers a PostgreSQL server has connections to spare for.
//!
//! Each writer holds a connection of its own, and a consumer one more (membership records,
//! offsets). Members × writers can exceed `max_connections` (less the slots reserved for
//! superusers) or the role's `CONNECTION LIMIT`; unchecked, that bites mid-run as a pool
//! timeout or "too many clients". So a consumer asks once connected, and stops with the
//! numbers, or — writers chosen by default — takes fewer.

use sqlx::postgres::PgConnection;

/// What a server has room for, as seen by one consumer once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub max_connections: i64,
    /// Slots this role may not use (`superuser_reserved_connections`, and PostgreSQL 16's
    /// `reserved_connections`; none for a superuser).
    pub reserved: i64,
    /// Client connections open, server-wide, this consumer's own left out.
    pub others: i64,
    /// The role's `CONNECTION LIMIT` (None: unlimited), and its connections open, ours left out.
    pub role_limit: Option<(String, i64, i64)>,
}

impl Room {
    /// How many more connections may open: the tighter of the server's and the role's room.
    fn free(&self) -> i64 {
        let server = self.max_connections - self.reserved - self.others;
        let role = self
            .role_limit
            .as_ref()
            .map(|(_, limit, used)| limit - used);
        role.map_or(server, |role| role.min(server)).max(0)
    }

    /// The most writers there is room for (a writer's connection each, and one more), or
    /// — not even one, or fewer than `chosen` — the one-line error naming the numbers.
    pub fn writers(&self, chosen: Option<usize>, database: &str) -> Result<usize, String> {
        let free = self.free();
        let needed = chosen.unwrap_or(1) as i64 + 1;
        if free >= needed {
            return Ok((free - 1) as usize);
        }
        let asked = match chosen {
            Some(n) => {
                format!("--writers {n} needs {needed} (a connection per writer and one more)")
            }
            None => format!("a consumer needs {needed} (one writer and one more)"),
        };
        let server = format!(
            "max_connections {} − {} reserved − {} in use by others",
            self.max_connections, self.reserved, self.others
        );
        let why = match &self.role_limit {
            Some((role, limit, used))
                if limit - used < self.max_connections - self.reserved - self.others =>
            {
                format!("role {role} has CONNECTION LIMIT {limit}, {used} in use by others")
            }
            _ => server,
        };
        Err(format!(
            "{database} leaves this consumer {free} connection{} ({why}); {asked}: lower \
             --writers, or stop other clients, or raise the limit",
            if free == 1 { "" } else { "s" }
        ))
    }
}

/// The server's room as `conn`'s session sees it; `ours` connections open are this consumer's.
pub async fn room(conn: &mut PgConnection, ours: i64) -> Result<Room, sqlx::Error> {
    let (max_connections, reserved, open, role, limit, role_open): (
        i64,
        i64,
        i64,
        String,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int8,
                CASE WHEN r.rolsuper THEN 0
                     ELSE current_setting('superuser_reserved_connections')::int8
                          + COALESCE(NULLIF(current_setting('reserved_connections', true), '')::int8, 0)
                END,
                (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
                r.rolname::text, r.rolconnlimit::int8,
                (SELECT count(*) FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND usesysid = r.oid)
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(conn)
    .await?;
    Ok(Room {
        max_connections,
        reserved,
        others: (open - ours).max(0),
        role_limit: (limit >= 0).then(|| (role, limit, (role_open - ours).max(0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(max: i64, reserved: i64, others: i64, role: Option<(i64, i64)>) -> Room {
        Room {
            max_connections: max,
            reserved,
            others,
            role_limit: role.map(|(limit, used)| ("app".to_string(), limit, used)),
        }
    }

    #[test]
    fn writers_get_what_the_server_and_role_leave() {
        assert_eq!(room(100, 3, 10, None).writers(None, "db"), Ok(86));
        assert_eq!(room(100, 3, 10, Some((5, 1))).writers(None, "db"), Ok(3));
        assert_eq!(room(100, 3, 10, Some((5, 1))).writers(Some(3), "db"), Ok(3));
    }

    #[test]
    fn too_few_connections_is_one_line_with_the_numbers() {
        assert_eq!(
            room(20, 3, 12, None).writers(Some(8), "PostgreSQL at postgres://h/d"),
            Err("PostgreSQL at postgres://h/d leaves this consumer 5 connections (max_connections \
                 20 − 3 reserved − 12 in use by others); --writers 8 needs 9 (a connection per writer and \
                 one more): lower --writers, or stop other clients, or raise the limit"
                .into())
        );
        assert_eq!(
            room(100, 3, 10, Some((2, 1))).writers(None, "db"),
            Err("db leaves this consumer 1 connection (role app has CONNECTION LIMIT 2, 1 in use by \
                 others); a consumer needs 2 (one writer and one more): lower --writers, or stop other \
                 clients, or raise the limit"
                .into())
        );
    }
}
