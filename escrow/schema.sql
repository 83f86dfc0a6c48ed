-- Ledger schema. Plain SQL that PostgreSQL accepts too, except `seq INTEGER PRIMARY KEY`
-- (SQLite's rowid alias; BIGSERIAL there). Money columns are integer micro-USDC.
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    referral_code TEXT NOT NULL UNIQUE,
    referred_by TEXT NULL REFERENCES agents(id),
    balance_micro BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS system_accounts (
    name TEXT PRIMARY KEY,
    balance_micro BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS escrows (
    id TEXT PRIMARY KEY,
    buyer_id TEXT NOT NULL REFERENCES agents(id),
    seller_id TEXT NOT NULL REFERENCES agents(id),
    status TEXT NOT NULL,
    amount_micro BIGINT NOT NULL,
    spent_micro BIGINT NOT NULL,
    held_micro BIGINT NOT NULL,
    remaining_micro BIGINT NOT NULL,
    refunded_micro BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    closed_at DOUBLE PRECISION NULL,
    description TEXT NOT NULL,
    meta_json TEXT NOT NULL,
    release_condition_json TEXT NULL
);
CREATE INDEX IF NOT EXISTS escrows_due ON escrows (status, expires_at);
CREATE INDEX IF NOT EXISTS escrows_buyer ON escrows (buyer_id, status);
CREATE INDEX IF NOT EXISTS escrows_seller ON escrows (seller_id, status);
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    escrow_id TEXT NOT NULL REFERENCES escrows(id),
    status TEXT NOT NULL,
    amount_micro BIGINT NOT NULL,
    captured_micro BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    closed_at DOUBLE PRECISION NULL
);
CREATE INDEX IF NOT EXISTS holds_escrow ON holds (escrow_id, status);
CREATE INDEX IF NOT EXISTS holds_due ON holds (status, expires_at);
CREATE TABLE IF NOT EXISTS settlements (
    id TEXT PRIMARY KEY,
    escrow_id TEXT NOT NULL REFERENCES escrows(id),
    hold_id TEXT NULL,
    kind TEXT NOT NULL,
    gross_micro BIGINT NOT NULL,
    fee_micro BIGINT NOT NULL,
    referral_micro BIGINT NOT NULL,
    note_json TEXT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS settlements_escrow ON settlements (escrow_id);
-- Append-only journal: every money movement is one row; balances above are kept in step with it.
CREATE TABLE IF NOT EXISTS transfers (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    from_account TEXT NOT NULL,
    to_account TEXT NOT NULL,
    amount_micro BIGINT NOT NULL,
    escrow_id TEXT NULL,
    hold_id TEXT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_faucet ON transfers (to_account, kind, created_at);
CREATE TABLE IF NOT EXISTS results (
    escrow_id TEXT NOT NULL REFERENCES escrows(id),
    metric TEXT NOT NULL,
    score TEXT NOT NULL,
    model_repo TEXT NULL,
    met INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    agent_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    route TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response_body TEXT NOT NULL,
    retry_after INTEGER NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (agent_id, idem_key)
);
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency_keys (created_at);
