-- Schema version 1 of a Postgres store: its tables and the functions that keep the contract.
-- `{s}` is the store's schema (one per application or tenant). Each function is one round
-- trip and one transaction, as a Lua script is on Redis (storage/redis/scripts/): every check
-- comes before the first write, and a refused call writes nothing.

-- Runs: the small, frequently updated row (no memory, no messages); fillfactor leaves room on
-- each page for HOT updates (a commit changes no indexed column but status/deadline).
CREATE TABLE {s}.runs (
    run_id text PRIMARY KEY, agent text NOT NULL, version integer NOT NULL, state text NOT NULL,
    seq bigint NOT NULL, status text NOT NULL, created_at float8 NOT NULL,
    updated_at float8 NOT NULL, fence bigint NOT NULL DEFAULT 0, holder text NOT NULL DEFAULT '',
    crashes integer NOT NULL DEFAULT 0, lease_owner text NOT NULL DEFAULT '',
    lease_expires float8 NOT NULL DEFAULT 0, deadline float8, expires_at float8,
    nonce text NOT NULL DEFAULT '', trace text NOT NULL DEFAULT '',
    usage jsonb NOT NULL DEFAULT '{}'
) WITH (fillfactor = 70);
CREATE INDEX runs_page ON {s}.runs (created_at, run_id);
CREATE INDEX runs_page_by_agent ON {s}.runs (agent, created_at, run_id);
CREATE INDEX runs_page_by_status ON {s}.runs (status, created_at, run_id);
CREATE INDEX runs_by_deadline ON {s}.runs (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX runs_by_expiry ON {s}.runs (expires_at) WHERE expires_at IS NOT NULL;
-- One row per memory field: a commit writes the fields its patch names.
CREATE TABLE {s}.memory (
    run_id text NOT NULL, name text NOT NULL, json bytea NOT NULL, PRIMARY KEY (run_id, name)
);
-- Append-only: one row per commit, its idempotency key unique within the run.
CREATE TABLE {s}.events (
    run_id text NOT NULL, seq bigint NOT NULL, key text NOT NULL, json bytea NOT NULL,
    PRIMARY KEY (run_id, seq), UNIQUE (run_id, key)
);
-- A run's live channel: its items numbered per run (as a Redis stream's ids are per key), the
-- last number in live_heads, so trimming a run's channel never depends on other runs.
CREATE TABLE {s}.live (
    run_id text NOT NULL, id bigint NOT NULL, base bigint NOT NULL, item bytea NOT NULL,
    at float8 NOT NULL, PRIMARY KEY (run_id, id)
);
CREATE TABLE {s}.live_heads (run_id text PRIMARY KEY, last bigint NOT NULL);
CREATE TABLE {s}.scope_usage (
    scope text NOT NULL, period text NOT NULL, name text NOT NULL, value bigint NOT NULL,
    PRIMARY KEY (scope, period, name)
);
CREATE TABLE {s}.scope_charges (
    scope text NOT NULL, period text NOT NULL, key text NOT NULL, expires_at float8 NOT NULL,
    PRIMARY KEY (scope, period, key)
);
-- Requests of a budget scope in flight (`Ledger.reserve`): one row per run holding some, until
-- a commit's charge of the run drops it, a release, or its lapse on the server's clock.
CREATE TABLE {s}.scope_held (
    scope text NOT NULL, period text NOT NULL, holder text NOT NULL, requests bigint NOT NULL,
    until float8 NOT NULL, PRIMARY KEY (scope, period, holder)
);
CREATE TABLE {s}.limits (
    subject text NOT NULL, name text NOT NULL, value bigint NOT NULL, PRIMARY KEY (subject, name)
);
CREATE TABLE {s}.rate_state (
    key text PRIMARY KEY, r float8, rt float8, k float8, kt float8,
    pause float8 NOT NULL DEFAULT 0
);
CREATE TABLE {s}.rate_slots (
    key text NOT NULL, holder text NOT NULL, until float8 NOT NULL, PRIMARY KEY (key, holder)
);
CREATE TABLE {s}.jobs (
    id bigserial PRIMARY KEY, agent text NOT NULL, run_id text NOT NULL, kind text NOT NULL,
    event text NOT NULL, payload text NOT NULL, consumer text NOT NULL DEFAULT '',
    touched float8 NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_agent ON {s}.jobs (agent, consumer, id);
CREATE TABLE {s}.dead_letters (
    id bigserial PRIMARY KEY, agent text NOT NULL, run_id text NOT NULL, kind text NOT NULL,
    reason text NOT NULL, at float8 NOT NULL
);
CREATE TABLE {s}.workers (name text PRIMARY KEY, beat text NOT NULL);

-- The server's clock, in unix seconds: leases, rate limits and queue idleness use it, so
-- every client agrees whatever its own clock says.
CREATE FUNCTION {s}.clock() RETURNS float8 LANGUAGE sql VOLATILE AS
$$ SELECT extract(epoch FROM clock_timestamp())::float8 $$;

-- Usage figures added, name by name (exact: numeric).
CREATE FUNCTION {s}.add_usage(a jsonb, b jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(n, coalesce((a ->> n)::numeric, 0)
                                        + coalesce((b ->> n)::numeric, 0)), '{}'::jsonb)
    FROM (SELECT jsonb_object_keys(a) UNION SELECT jsonb_object_keys(b)) AS t (n)
$$;

-- A scope charge, once per key, which drops run p_holder's reservation there: false when the
-- key was charged before (nothing charged).
CREATE FUNCTION {s}.charge(p_scope text, p_period text, p_key text, p_usage jsonb,
                           p_expires float8, p_holder text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {s}.scope_held WHERE scope = p_scope AND period = p_period AND holder = p_holder;
    INSERT INTO {s}.scope_charges VALUES (p_scope, p_period, p_key, p_expires)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO {s}.scope_usage
        SELECT p_scope, p_period, t.n, t.v::bigint FROM jsonb_each_text(p_usage) AS t (n, v)
        ON CONFLICT (scope, period, name) DO UPDATE SET value = scope_usage.value + excluded.value;
    RETURN true;
END $$;

-- Admit one model request of run p_holder against a budget scope (as scripts/reserve.lua;
-- `Ledger.reserve` says the rule): p_limits are the declared limits, each replaced by one set
-- for the scope; used = committed totals + the other runs' live reservations + p_spent. The
-- scope's usage rows are locked first, so concurrent reservations of one scope take turns.
CREATE FUNCTION {s}.reserve(p_scope text, p_period text, p_holder text, p_limits jsonb,
    p_ttl float8, p_spent jsonb, OUT o_admitted boolean, OUT o_used jsonb, OUT o_limits jsonb)
    LANGUAGE plpgsql AS $$
DECLARE
    now float8 := {s}.clock();
    mine bigint := 0;
    others bigint := 0;
    want bigint := coalesce((p_spent ->> 'requests')::bigint, 0) + 1;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('{s}:scope:' || p_scope || ':' || p_period, 0));
    DELETE FROM {s}.scope_held WHERE scope = p_scope AND period = p_period AND until <= now;
    SELECT coalesce(sum(requests) FILTER (WHERE holder <> p_holder), 0),
           coalesce(sum(requests) FILTER (WHERE holder = p_holder), 0)
        INTO others, mine FROM {s}.scope_held WHERE scope = p_scope AND period = p_period;
    o_limits := p_limits || coalesce((SELECT jsonb_object_agg(name, value) FROM {s}.limits
                                      WHERE subject = 'scope/' || p_scope), '{}');
    o_used := {s}.add_usage(
        {s}.add_usage(coalesce((SELECT jsonb_object_agg(name, value) FROM {s}.scope_usage
                                WHERE scope = p_scope AND period = p_period), '{}'), p_spent),
        CASE WHEN others > 0 THEN jsonb_build_object('requests', others) ELSE '{}' END);
    o_used := o_used || jsonb_build_object('total_tokens',
        coalesce((o_used ->> 'input_tokens')::numeric, 0)
        + coalesce((o_used ->> 'output_tokens')::numeric, 0));
    o_admitted := mine >= want OR NOT EXISTS (
        SELECT 1 FROM jsonb_each_text(o_limits) AS l (n, v)
        WHERE coalesce((o_used ->> l.n)::numeric, 0) >= l.v::numeric);
    IF o_admitted THEN
        INSERT INTO {s}.scope_held VALUES (p_scope, p_period, p_holder, greatest(mine, want),
                                           now + p_ttl)
            ON CONFLICT (scope, period, holder)
            DO UPDATE SET requests = excluded.requests, until = excluded.until;
    END IF;
END $$;

-- Take a run's lease (as scripts/lease.lua): o_got 0 no such run, 1 taken (o_token,
-- o_crashes, o_seq), -1 held by o_holder for o_expires_in more seconds. A lease held by
-- p_owner already is extended (a resend); one held by p_dead (proven dead by the caller) is
-- taken over like an expired one; a holder that never released counts a crash.
CREATE FUNCTION {s}.acquire(p_run text, p_owner text, p_ttl float8, p_dead text,
    OUT o_got integer, OUT o_token bigint, OUT o_crashes integer, OUT o_seq bigint,
    OUT o_holder text, OUT o_expires_in float8) LANGUAGE plpgsql AS $$
DECLARE
    cur record;
    now_ float8 := {s}.clock();
    live boolean;
BEGIN
    SELECT fence, holder, crashes, lease_owner, lease_expires, seq INTO cur
        FROM {s}.runs WHERE run_id = p_run FOR UPDATE;
    IF NOT FOUND THEN o_got := 0; RETURN; END IF;
    live := cur.lease_owner <> '' AND cur.lease_expires > now_;
    IF live AND cur.lease_owner = p_owner THEN
        UPDATE {s}.runs SET lease_expires = now_ + p_ttl WHERE run_id = p_run;
        o_got := 1; o_token := cur.fence; o_crashes := cur.crashes; o_seq := cur.seq;
        RETURN;
    END IF;
    IF live AND cur.lease_owner IS DISTINCT FROM p_dead THEN
        o_got := -1; o_holder := cur.lease_owner; o_expires_in := cur.lease_expires - now_;
        RETURN;
    END IF;
    o_crashes := cur.crashes + (CASE WHEN cur.holder <> '' THEN 1 ELSE 0 END);
    o_token := cur.fence + 1;
    UPDATE {s}.runs SET fence = o_token, holder = p_owner, crashes = o_crashes,
        lease_owner = p_owner, lease_expires = now_ + p_ttl WHERE run_id = p_run;
    o_got := 1; o_seq := cur.seq;
END $$;

-- Create a run at seq 0 with its memory and creation event unless it exists (o_inserted
-- false: nothing written), then, when p_owner is given, take its lease as acquire() does.
CREATE FUNCTION {s}.create_run(p_run text, p_agent text, p_version integer, p_state text,
    p_status text, p_created float8, p_deadline float8, p_nonce text, p_expires float8,
    p_trace text, p_names text[], p_values bytea[], p_key text, p_event bytea,
    p_owner text, p_ttl float8, p_dead text,
    OUT o_inserted boolean, OUT o_got integer, OUT o_token bigint, OUT o_crashes integer,
    OUT o_seq bigint, OUT o_holder text, OUT o_expires_in float8) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.runs (run_id, agent, version, state, seq, status, created_at, updated_at,
                          deadline, nonce, expires_at, trace)
        VALUES (p_run, p_agent, p_version, p_state, 0, p_status, p_created, p_created,
                p_deadline, p_nonce, p_expires, p_trace)
        ON CONFLICT (run_id) DO NOTHING;
    o_inserted := FOUND;
    IF o_inserted THEN
        INSERT INTO {s}.memory SELECT p_run, t.n, t.v FROM unnest(p_names, p_values) AS t (n, v);
        INSERT INTO {s}.events VALUES (p_run, 0, p_key, p_event);
    END IF;
    IF p_owner <> '' THEN
        SELECT * INTO o_got, o_token, o_crashes, o_seq, o_holder, o_expires_in
            FROM {s}.acquire(p_run, p_owner, p_ttl, p_dead);
    END IF;
END $$;

-- Commit one transition (as scripts/commit.lua): returns {outcome, seq} with outcome
-- 0 committed, 1 duplicate (the key's seq), 2 lease lost, 3 conflict (the run's seq),
-- 4 no such run. Checks come first, in commit.lua's order; a refused commit writes nothing.
-- The UPDATE's WHERE is the fence: a concurrent commit of the same seq waits for the row
-- and then finds it moved on.
CREATE FUNCTION {s}.commit(p_run text, p_expected bigint, p_token bigint, p_key text,
    p_state text, p_status text, p_updated float8, p_deadline float8, p_version integer,
    p_expires float8, p_event bytea, p_names text[], p_values bytea[], p_dropped text[],
    p_usage jsonb, p_scope text, p_period text, p_scope_expires float8,
    p_live_bases bigint[], p_live_items bytea[], p_live_maxlen bigint, p_live_ttl float8,
    p_channel text)
    RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    done bigint;
    cur record;
    ended boolean := p_status <> 'running';
BEGIN
    SELECT e.seq INTO done FROM {s}.events e WHERE e.run_id = p_run AND e.key = p_key;
    IF FOUND THEN RETURN ARRAY[1, done]; END IF;
    UPDATE {s}.runs SET seq = p_expected + 1, state = p_state, status = p_status,
        updated_at = p_updated, crashes = 0, deadline = p_deadline,
        version = coalesce(p_version, version), expires_at = coalesce(p_expires, expires_at),
        usage = CASE WHEN p_usage IS NULL THEN usage ELSE {s}.add_usage(usage, p_usage) END,
        holder = CASE WHEN ended THEN '' ELSE holder END,
        lease_owner = CASE WHEN ended THEN '' ELSE lease_owner END,
        lease_expires = CASE WHEN ended THEN 0 ELSE lease_expires END
        WHERE run_id = p_run AND fence = p_token AND seq = p_expected;
    IF NOT FOUND THEN
        SELECT e.seq INTO done FROM {s}.events e WHERE e.run_id = p_run AND e.key = p_key;
        IF FOUND THEN RETURN ARRAY[1, done]; END IF;
        SELECT r.seq, r.fence INTO cur FROM {s}.runs r WHERE r.run_id = p_run;
        IF NOT FOUND THEN RETURN ARRAY[4, 0]; END IF;
        IF cur.fence <> p_token THEN RETURN ARRAY[2, 0]; END IF;
        RETURN ARRAY[3, cur.seq];
    END IF;
    INSERT INTO {s}.events VALUES (p_run, p_expected + 1, p_key, p_event);
    IF cardinality(p_names) > 0 THEN
        INSERT INTO {s}.memory SELECT p_run, t.n, t.v FROM unnest(p_names, p_values) AS t (n, v)
            ON CONFLICT (run_id, name) DO UPDATE SET json = excluded.json;
    END IF;
    IF cardinality(p_dropped) > 0 THEN
        DELETE FROM {s}.memory WHERE run_id = p_run AND name = ANY (p_dropped);
    END IF;
    IF p_scope IS NOT NULL THEN
        PERFORM {s}.charge(p_scope, p_period, p_key, coalesce(p_usage, '{}'), p_scope_expires,
                          p_run);
    END IF;
    IF cardinality(p_live_items) > 0 THEN
        PERFORM {s}.append_live(p_run, p_live_bases, p_live_items, p_live_maxlen, p_live_ttl,
                                p_channel);
    END IF;
    RETURN ARRAY[0, p_expected + 1];
END $$;

-- Append items to a run's live channel, trim it to its newest p_maxlen items (and those
-- younger than p_ttl), and wake its readers. The run's head row, locked to the end of the
-- transaction, numbers the items and makes one run's ids commit in increasing order, so a
-- reader resuming after an id never misses an item committed later with a smaller one.
-- Best effort, as the contract says: its transaction does not wait for the WAL to reach the
-- disk (visible at once; only a crash of the server within ~200 ms can lose it), so a
-- publish costs a round trip, not a disk flush.
CREATE FUNCTION {s}.append_live(p_run text, p_bases bigint[], p_items bytea[],
    p_maxlen bigint, p_ttl float8, p_channel text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {s}.clock();
    k integer := cardinality(p_items);
    last_ bigint;
    oldest float8;
BEGIN
    INSERT INTO {s}.live_heads AS h VALUES (p_run, k)
        ON CONFLICT (run_id) DO UPDATE SET last = h.last + k RETURNING h.last INTO last_;
    INSERT INTO {s}.live (run_id, id, base, item, at)
        SELECT p_run, last_ - k + t.o, t.b, t.i, now_
        FROM unnest(p_bases, p_items) WITH ORDINALITY AS t (b, i, o);
    DELETE FROM {s}.live WHERE run_id = p_run AND id <= last_ - p_maxlen;
    SELECT at INTO oldest FROM {s}.live WHERE run_id = p_run ORDER BY id LIMIT 1;
    IF oldest < now_ - p_ttl THEN  -- items are in time order: the oldest says if any expired
        DELETE FROM {s}.live WHERE run_id = p_run AND at < now_ - p_ttl;
    END IF;
    PERFORM pg_notify(p_channel, p_run);
END $$;

-- `publish`: append_live in a transaction of its own that does not wait for its WAL flush. A
-- commit appends its live items inside its own (durable) transaction instead.
CREATE FUNCTION {s}.publish(p_run text, p_bases bigint[], p_items bytea[], p_maxlen bigint,
                            p_ttl float8, p_channel text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM {s}.append_live(p_run, p_bases, p_items, p_maxlen, p_ttl, p_channel);
END $$;

-- Delete the runs whose retention ran out by p_now, all of each in this one transaction,
-- and live items older than p_live_ttl; how many runs.
CREATE FUNCTION {s}.collect(p_now float8, p_live_ttl float8) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    ids text[];
BEGIN
    ids := ARRAY(SELECT run_id FROM {s}.runs WHERE expires_at <= p_now FOR UPDATE);
    DELETE FROM {s}.memory WHERE run_id = ANY (ids);
    DELETE FROM {s}.events WHERE run_id = ANY (ids);
    DELETE FROM {s}.live WHERE run_id = ANY (ids) OR at < {s}.clock() - p_live_ttl;
    DELETE FROM {s}.live_heads WHERE run_id = ANY (ids);
    DELETE FROM {s}.runs WHERE run_id = ANY (ids);
    RETURN cardinality(ids);
END $$;

-- A rate-limit slot (as scripts/ratelimit.lua, in seconds, on the server's clock):
-- o_wait 0 when taken, else seconds to wait and o_why; when the slots are all held, their
-- holders too (the caller may prove some dead and ask again with them in p_dead).
CREATE FUNCTION {s}.rate_acquire(p_key text, p_rate float8, p_burst float8, p_krate float8,
    p_kburst float8, p_cap integer, p_holder text, p_slot_ttl float8, p_dead text[],
    OUT o_wait float8, OUT o_why text, OUT o_holders text[]) LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {s}.clock();
    st record;
    v_r float8;
    v_k float8;
BEGIN
    o_wait := 0; o_why := ''; o_holders := '{}';
    INSERT INTO {s}.rate_state (key) VALUES (p_key) ON CONFLICT DO NOTHING;
    SELECT * INTO st FROM {s}.rate_state WHERE key = p_key FOR UPDATE;
    IF st.pause > now_ THEN o_wait := st.pause - now_; o_why := 'paused'; RETURN; END IF;
    IF p_cap > 0 THEN
        DELETE FROM {s}.rate_slots WHERE key = p_key AND (until <= now_ OR holder = ANY (p_dead));
        IF (SELECT count(*) FROM {s}.rate_slots WHERE key = p_key) >= p_cap THEN
            o_wait := 0.02; o_why := 'concurrency';
            o_holders := ARRAY(SELECT holder FROM {s}.rate_slots WHERE key = p_key
                               ORDER BY holder LIMIT 100);
            RETURN;
        END IF;
    END IF;
    IF p_rate > 0 THEN
        v_r := least(p_burst, coalesce(st.r, p_burst) + (now_ - coalesce(st.rt, now_)) * p_rate);
        IF v_r < 1 THEN
            o_wait := ceil((1 - v_r) * 1000 / p_rate) / 1000; o_why := 'requests'; RETURN;
        END IF;
    END IF;
    IF p_krate > 0 THEN
        v_k := least(p_kburst,
                     coalesce(st.k, p_kburst) + (now_ - coalesce(st.kt, now_)) * p_krate);
        IF v_k <= 0 THEN
            o_wait := ceil((1 - v_k) * 1000 / p_krate) / 1000; o_why := 'tokens'; RETURN;
        END IF;
    END IF;
    UPDATE {s}.rate_state SET
        r = CASE WHEN v_r IS NULL THEN r ELSE v_r - 1 END,
        rt = CASE WHEN v_r IS NULL THEN rt ELSE now_ END,
        k = coalesce(v_k, k), kt = CASE WHEN v_k IS NULL THEN kt ELSE now_ END
        WHERE key = p_key;
    IF p_cap > 0 THEN
        INSERT INTO {s}.rate_slots VALUES (p_key, p_holder, now_ + p_slot_ttl)
            ON CONFLICT (key, holder) DO UPDATE SET until = excluded.until;
    END IF;
END $$;

CREATE FUNCTION {s}.rate_release(p_key text, p_holder text, p_tokens bigint) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {s}.rate_slots WHERE key = p_key AND holder = p_holder;
    IF p_tokens > 0 THEN
        UPDATE {s}.rate_state SET k = k - p_tokens WHERE key = p_key AND k IS NOT NULL;
    END IF;
END $$;
