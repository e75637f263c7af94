"""Pure analytics logic: raw-table columns derived from the event catalog."""
