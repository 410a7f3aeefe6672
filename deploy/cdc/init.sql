-- The cdc profile's table (docker-compose.yml, service db): the one the README's
-- debezium-rules example maps and the CDC tests use (devtools/connect_cdc.py DOCUMENTS_DDL).
-- Run once, by the postgres image, when the db-data volume is first initialised.
CREATE TABLE documents (
    id           text PRIMARY KEY,
    collection   text NOT NULL,
    title        text NOT NULL,
    body         text NOT NULL,
    rev          integer NOT NULL DEFAULT 1,
    tags         text[] NOT NULL DEFAULT '{}',
    chunks       jsonb NOT NULL DEFAULT '[]',
    content_hash text
);
-- Deletes carry the whole row (collection, tags, chunks), not just the primary key.
ALTER TABLE documents REPLICA IDENTITY FULL;
