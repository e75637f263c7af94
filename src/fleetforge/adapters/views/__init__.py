"""What people look at: the built-in dashboard and the generated Grafana dashboard."""
