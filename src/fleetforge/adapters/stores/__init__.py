"""State stores: SQLite and PostgreSQL behind the store ports, and the SQL they share."""
