"""Risk directions: features whose effect on risk has a known sign, built into the models.

A tree model learns only the parameter ranges it was shown. Where the direction of risk
is known a priori (money leaving sooner after a new device is not *less* risky; a larger
share of the balance is not less risky), a monotone constraint makes the model's score
non-decreasing along that direction, everything else held fixed, so it extrapolates the
right way outside the training ranges instead of falling back to "normal".

:data:`RISK_DIRECTIONS` lists every candidate with its sign and reason. :data:`DEFAULT`
is the subset chosen by measurement (in-distribution AUPRC and stress recall, feature by
feature: ``docs/models.md``). The teacher applies them through LightGBM's
``monotone_constraints``; the tree student inherits its teacher's; the linear student
keeps each constrained coefficient on its sign (see :mod:`training.distill`).

>>> constraint_vector(("log_usd", "out_balance_ratio", "log_gap_novelty"), ("out_balance_ratio", "log_gap_novelty"))
[0, 1, -1]
>>> parse("none"), parse("out_balance_ratio")
((), ('out_balance_ratio',))
"""

from __future__ import annotations

from typing import Sequence

from stream.errors import DataError

# feature -> (+1: higher is not less risky, -1: lower is not less risky; why)
RISK_DIRECTIONS: dict[str, tuple[int, str]] = {
    "out_balance_ratio": (1, "a larger share of the estimated balance leaving is not less risky"),
    "wd_vs_last_deposit": (1, "withdrawing more of the last deposit is not less risky"),
    "near_threshold_24h": (1, "more just-under-threshold withdrawals in 24 h are not less risky"),
    "near_threshold": (1, "a withdrawal just under the reporting threshold is not less risky"),
    "new_device": (1, "a never-seen device is not less risky"),
    "new_ip": (1, "a never-seen IP address is not less risky"),
    "new_country": (1, "a never-seen country is not less risky"),
    "new_counterparty": (1, "a never-seen payout address or counterparty is not less risky"),
    "novelty_1h": (1, "more novel logins in the last hour are not less risky"),
    "log_gap_novelty": (-1, "sooner after a new device, IP or country is not less risky"),
    "log_gap_login": (-1, "sooner after a login is not less risky"),
    "log_gap_deposit": (-1, "sooner after a deposit is not less risky (a mule's turnaround)"),
    "log_gap_prev": (-1, "sooner after the previous event is not less risky (velocity)"),
    "cnt_5m": (1, "more events in 5 minutes are not less risky (velocity)"),
    "cnt_1h": (1, "more events in an hour are not less risky (velocity)"),
    "wd_cnt_5m": (1, "more withdrawals in 5 minutes are not less risky"),
    "wd_cnt_1h": (1, "more withdrawals in an hour are not less risky"),
    "log_wd_usd_1h": (1, "more USD withdrawn in an hour is not less risky"),
}

# Chosen by measurement (docs/models.md, "Risk directions and stress recall"): of the sets
# tried, the one with the best validation AUPRC for teacher and student and the highest
# lowest stress recall. The others cost validation AUPRC without raising stress recall.
DEFAULT: tuple[str, ...] = (
    "out_balance_ratio", "log_gap_novelty", "wd_cnt_5m", "wd_cnt_1h", "log_wd_usd_1h",
)


def constraint_vector(feature_names: Sequence[str], chosen: Sequence[str]) -> list[int]:
    """LightGBM's ``monotone_constraints``: the sign of each chosen feature, 0 elsewhere."""
    unknown = [f for f in chosen if f not in RISK_DIRECTIONS]
    if unknown:
        raise DataError(f"no risk direction is defined for: {', '.join(unknown)}")
    missing = [f for f in chosen if f not in feature_names]
    if missing:
        raise DataError(f"constrained features are not among the model's features: {', '.join(missing)}")
    wanted = set(chosen)
    return [RISK_DIRECTIONS[f][0] if f in wanted else 0 for f in feature_names]


def parse(spec: str) -> tuple[str, ...]:
    """A CLI value: ``default``, ``none``, ``all`` or a comma-separated list of features."""
    spec = spec.strip()
    if spec == "default":
        return DEFAULT
    if spec == "none":
        return ()
    if spec == "all":
        return tuple(RISK_DIRECTIONS)
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [f for f in names if f not in RISK_DIRECTIONS]
    if unknown:
        raise DataError(f"--monotone: no risk direction for {', '.join(unknown)} "
                        f"(known: {', '.join(RISK_DIRECTIONS)}; or default, none, all)")
    return names


def lightgbm_params(vector: Sequence[int]) -> dict:
    """The LightGBM parameters that apply a constraint vector (none when it is all zeros).

    The ``intermediate`` method constrains less than ``basic``: a better fit, the same guarantee.
    """
    if not any(vector):
        return {}
    return {"monotone_constraints": list(vector), "monotone_constraints_method": "intermediate"}


def as_manifest(chosen: Sequence[str]) -> dict[str, int]:
    """The constraints as a manifest records them: feature -> sign."""
    return {f: RISK_DIRECTIONS[f][0] for f in chosen}
