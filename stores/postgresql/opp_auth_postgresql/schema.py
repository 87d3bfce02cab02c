"""The database schema and its versioned migrations, run by every server at start.

Migrations run in one transaction under a transaction-level advisory lock, so two
servers starting at once apply them once: the second waits, then finds the
schema current. A database whose schema is newer than this release knows is
refused (upgrade opp-auth-postgresql), never written.

Every table is prefixed ``opp_auth_`` and lives in the connection's schema
(``search_path``; set ``options=-csearch_path=...`` in the URL to choose one).
Values are JSON *text* (not jsonb): JSON text escapes every control character,
NUL included, which PostgreSQL's text and jsonb types cannot hold raw, and it
keeps the stored entries byte-for-byte what the ``.storage/auth`` file holds.
"""

from __future__ import annotations

from typing import Any

from opp_auth import StorageBackend

StorageError = StorageBackend.Error

# Advisory lock keys (64-bit; chosen once, never changed): schema migrations, the commit
# order of changes, and servers at work (shared) against storage copy (exclusive).
LOCK_MIGRATE = 0x6F70_7061_7574_6801
LOCK_WRITE = 0x6F70_7061_7574_6802
LOCK_SERVERS = 0x6F70_7061_7574_6803

CHANNEL = "opp_auth_changes"

MIGRATIONS: list[list[str]] = [
    # 1: the auth store's four lists, plugin documents, the change feed.
    [
        """CREATE TABLE opp_auth_users (
            id text PRIMARY KEY,
            pos bigserial NOT NULL,
            data text NOT NULL)""",
        """CREATE TABLE opp_auth_groups (
            id text PRIMARY KEY,
            pos bigserial NOT NULL,
            data text NOT NULL)""",
        """CREATE TABLE opp_auth_credentials (
            id text PRIMARY KEY,
            pos bigserial NOT NULL,
            user_id text NOT NULL REFERENCES opp_auth_users (id) ON DELETE CASCADE,
            data text NOT NULL)""",
        "CREATE INDEX opp_auth_credentials_user ON opp_auth_credentials (user_id)",
        """CREATE TABLE opp_auth_refresh_tokens (
            id text PRIMARY KEY,
            pos bigserial NOT NULL,
            user_id text NOT NULL REFERENCES opp_auth_users (id) ON DELETE CASCADE,
            credential_id text,
            data text NOT NULL,
            usage text)""",
        "CREATE INDEX opp_auth_refresh_tokens_user ON opp_auth_refresh_tokens (user_id)",
        "CREATE INDEX opp_auth_refresh_tokens_credential ON opp_auth_refresh_tokens (credential_id)",
        """CREATE TABLE opp_auth_documents (
            key text NOT NULL,
            path text NOT NULL,
            seq bigint NOT NULL,
            value text,
            PRIMARY KEY (key, path))""",
        "CREATE SEQUENCE opp_auth_document_seq",
        """CREATE TABLE opp_auth_document_versions (
            key text PRIMARY KEY,
            version integer NOT NULL)""",
        """CREATE TABLE opp_auth_changes (
            seq bigserial PRIMARY KEY,
            origin text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            records text NOT NULL)""",
        "CREATE INDEX opp_auth_changes_at ON opp_auth_changes (at)",
    ],
    # 2: the audit log (opp_auth_postgresql.audit): records of one hash chain, append-only, and its head.
    [
        """CREATE TABLE opp_auth_audit (
            seq bigint PRIMARY KEY,
            at timestamptz NOT NULL,
            type text NOT NULL,
            record text NOT NULL)""",
        "CREATE INDEX opp_auth_audit_at ON opp_auth_audit (at)",
        """CREATE TABLE opp_auth_audit_head (
            id integer PRIMARY KEY CHECK (id = 1),
            seq bigint NOT NULL,
            hash text NOT NULL)""",
        """CREATE FUNCTION opp_auth_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND current_setting('opp_auth.audit_prune', true) = 'on' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'opp_auth_audit is append-only: % refused', TG_OP;
        END $$""",
        """CREATE TRIGGER opp_auth_audit_append_only BEFORE UPDATE OR DELETE ON opp_auth_audit
            FOR EACH ROW EXECUTE FUNCTION opp_auth_audit_append_only()""",
    ],
    # 3: ephemeral state several servers share (opp_auth_postgresql.ephemeral): login flows in
    # progress and authorization codes, keyed by a digest, expiring by the database's clock.
    [
        """CREATE TABLE opp_auth_flows (
            id text PRIMARY KEY,
            state text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            expires_at timestamptz NOT NULL,
            lease_until timestamptz)""",
        "CREATE INDEX opp_auth_flows_expires ON opp_auth_flows (expires_at)",
        """CREATE TABLE opp_auth_codes (
            id text PRIMARY KEY,
            client_id text NOT NULL,
            value text NOT NULL,
            expires_at timestamptz NOT NULL)""",
        "CREATE INDEX opp_auth_codes_expires ON opp_auth_codes (expires_at)",
    ],
    # 4: a document path's subtree is a range of this index (byte order: path texts are ASCII).
    [
        'CREATE INDEX opp_auth_documents_subtree ON opp_auth_documents (key, (path COLLATE "C"))',
    ],
    # 5: plugins' short-lived values every server must see (notify's pending login code), keyed by a
    # digest, replaced by the next put, taken at most once, expiring by the database's clock.
    [
        """CREATE TABLE opp_auth_values (
            id text PRIMARY KEY,
            value text NOT NULL,
            expires_at timestamptz NOT NULL)""",
        "CREATE INDEX opp_auth_values_expires ON opp_auth_values (expires_at)",
    ],
    # 6: the audit head row only moves forward, to a record the table holds (and is never deleted),
    # and neither audit table can be truncated; a session that sets opp_auth.audit_reset (a deliberate
    # wipe, the tests) may. Like the table's trigger, this stops mistakes, not the database's owner.
    [
        """CREATE FUNCTION opp_auth_audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('opp_auth.audit_reset', true) = 'on' THEN
                RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
            END IF;
            IF TG_OP = 'DELETE' THEN
                RAISE EXCEPTION 'opp_auth_audit_head cannot be deleted';
            END IF;
            IF TG_OP = 'UPDATE' AND NEW.seq <= OLD.seq THEN
                RAISE EXCEPTION 'opp_auth_audit_head only moves forward (% to % refused)', OLD.seq, NEW.seq;
            END IF;
            -- The record's text holds its hash as "hash":"<hex>" (canonical JSON: a quote inside a string
            -- is escaped, so this text is a key's). Not parsed: a record may hold an escaped NUL, which no
            -- PostgreSQL text can, so a cast to json would fail on it.
            IF NOT EXISTS (
                SELECT 1 FROM opp_auth_audit a
                WHERE a.seq = NEW.seq AND strpos(a.record, '"hash":"' || NEW.hash || '"') > 0
            ) THEN
                RAISE EXCEPTION 'opp_auth_audit_head must name a record of opp_auth_audit (seq %)', NEW.seq;
            END IF;
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER opp_auth_audit_head_forward BEFORE INSERT OR UPDATE OR DELETE ON opp_auth_audit_head
            FOR EACH ROW EXECUTE FUNCTION opp_auth_audit_head_forward()""",
        """CREATE FUNCTION opp_auth_audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('opp_auth.audit_reset', true) = 'on' THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION '% is append-only: TRUNCATE refused', TG_TABLE_NAME;
        END $$""",
        """CREATE TRIGGER opp_auth_audit_no_truncate BEFORE TRUNCATE ON opp_auth_audit
            FOR EACH STATEMENT EXECUTE FUNCTION opp_auth_audit_no_truncate()""",
        """CREATE TRIGGER opp_auth_audit_head_no_truncate BEFORE TRUNCATE ON opp_auth_audit_head
            FOR EACH STATEMENT EXECUTE FUNCTION opp_auth_audit_no_truncate()""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


async def async_migrate(conn: Any) -> int:
    """Bring the schema to SCHEMA_VERSION (conn: an async connection, not in a transaction); the old version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
        await conn.execute("CREATE TABLE IF NOT EXISTS opp_auth_meta (name text PRIMARY KEY, value text NOT NULL)")
        cur = await conn.execute("SELECT value FROM opp_auth_meta WHERE name = 'schema_version'")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"The database holds opp-auth schema version {current}; this opp-auth-postgresql knows "
                f"version {SCHEMA_VERSION}. It was written by a newer release: upgrade opp-auth-postgresql."
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                await conn.execute(statement)
        if current != SCHEMA_VERSION:
            await conn.execute(
                "INSERT INTO opp_auth_meta (name, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
            await conn.execute(
                "INSERT INTO opp_auth_meta (name, value) VALUES ('pruned_through', '0') ON CONFLICT (name) DO NOTHING"
            )
    return current
