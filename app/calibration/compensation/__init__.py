"""The parts of compensation, by concept: its configuration, the layout of tiles on a die, the
prediction of each sampled patch's code sum, and the threshold search. The entry point is
:func:`app.calibration.compensate.compensate_image`."""
