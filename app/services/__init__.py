"""Use cases. The only layer where hardware, calibration and the database meet.

Every function takes the caller's ``Session`` (a unit of work: the caller commits or rolls back) and
raises :mod:`app.errors` exceptions, never HTTP ones.
"""
