"""Dashboard pages and assets (served by :mod:`app.api.dashboard`)."""
