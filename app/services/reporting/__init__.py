"""Reporting: what the dashboards show and what the test-data exports contain, per (die, model).

Reads through :mod:`app.db.repositories.reporting` (read-only SQL) and assembles plain dataclasses: the
JSON of the dashboard endpoints, and the records :mod:`app.exports` writes as STDF, E142, CSV and Parquet.
Imports flow one way, top to bottom:

* :mod:`.bins`, :mod:`.stats`: pass/fail and colour of a soft bin, bin paretos; statistics, Cpk, SPC.
* :mod:`.scope`: which lot, wafer and model a report covers (the default model when none is asked for).
* :mod:`.rows`: one :class:`~app.exports.records.DieRow` per die for one model.
* :mod:`.lots`, :mod:`.wafers`, :mod:`.dies`, :mod:`.jobs`: the dashboard views.
* :mod:`.exports`: the STDF / E142 / CSV / Parquet files.

Conventions every view and export shares:

* Pass: soft bin 1-9 (1 best); 0 is a tester alarm; 10 and up are failures (docs/domain.md section 4).
* A die has one signature and, per model, its own image and functional tests; every bin, yield,
  accuracy, pareto and map is of one model. A test result without a weight image measured the die
  *before* calibration (the uncompensated model); one with an image measured it *after*. A die's final
  bins for a model are those of its latest calibrated test with that model, or of its latest test with
  that model when it has no calibrated one. Yield = passing dies / dies tested with the model.
* Accuracy is stored as a fraction; reports show percent.
* Wafer maps: x grows to the right, y grows downward, notch at the bottom.
"""
