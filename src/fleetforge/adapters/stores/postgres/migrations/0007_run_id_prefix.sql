-- Run ids in byte order, for lookups by id prefix (`find_run_ids`) whatever the database's collation:
-- the primary key follows the default collation, which may order ids linguistically.
CREATE INDEX IF NOT EXISTS runs_by_id_bytes ON runs (id COLLATE "C");
