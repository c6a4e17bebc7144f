"""Persistence: tables (:mod:`app.db.tables`), engine and sessions (:mod:`app.db.session`),
migrations (:mod:`app.db.migrate`) and one repository module per aggregate (:mod:`app.db.repositories`).
"""
