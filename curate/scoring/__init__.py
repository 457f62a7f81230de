"""Difficulty scoring: PISM, CMAB and RAP's estimators, and the ``Scorer`` that runs them on a batch.

Modules: ``sample`` (a row as scorers see it), ``stage`` (the interface a method implements and the
engines it shares), ``registry`` (the methods, in run order), ``scorer`` (runs them over a table),
``pism``/``masks`` (PISM), ``cmab``/``cmab_calibration`` (CMAB), ``rap``/``ace`` (RAP's CDE and ACE),
``attention_probe``/``probing`` (attention masses from one teacher-forced forward), ``prompts``.
Nothing is imported here: report and select read ``registry`` and ``cmab_calibration`` without torch.
"""
