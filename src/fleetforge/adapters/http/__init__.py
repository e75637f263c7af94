"""The one HTTP server every FleetForge listener runs on."""
