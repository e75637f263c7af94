"""ClickHouse schema migrations (`NNNN_name.sql`); deploy/clickhouse/migrations links to them."""
