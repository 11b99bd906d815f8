"""Calibration: measure kernels on a real device, fit a profile, import others' tables, validate.

torch is imported only inside functions (``measure``, ``reference``), so importing this package
stays light. Public entry points::

    measure.calibrate(out, device="cuda", quick=False, resume=False) -> Profile
    aiconfigurator.import_aiconfigurator(root, system="h200_sxm") -> (profile dict, held-back report)
    fit.fit_profile(samples, provenance=..., settings=...) -> profile dict
    fit.holdout_errors(samples, fraction=0.1) -> held-back fit errors per op
    reference.time_cases(model_spec, cases, device=...) -> measured pass times
"""

from __future__ import annotations

from moesim.hardware.profile import Profile, ProfileError, load_profile, write_profile

__all__ = ["Profile", "ProfileError", "load_profile", "write_profile"]
