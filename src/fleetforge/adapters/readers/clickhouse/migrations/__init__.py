"""ClickHouse schema migrations (`NNNN_name.sql`); deploy/clickhouse/migrations holds the same files."""
