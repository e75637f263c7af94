-- A run's outputs (its spec's `outputs` resolved when it succeeds), JSON; NULL until then or when it has none.
ALTER TABLE runs ADD COLUMN outputs TEXT;
