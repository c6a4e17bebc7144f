"""Test-data exports: STDF V4, SEMI E142 wafer maps, per-die CSV and Parquet.

Pure functions over the plain records of :mod:`app.exports.records`: no SQL, no HTTP. The reporting
service (:mod:`app.services.reporting.exports`) reads the database and builds those records.
"""
