"""Robustness evaluation: PGD attacks, Lipschitz bounds, certificates, sanity checks."""
from .attacks import AttackResult, LOSSES, eps_curve, input_gradient_norms, pgd, robust_accuracy
from .certify import Certificate, NearestCenterScores, attack_certified, certified_accuracy, certify, radius_grid
from .lipschitz import lipschitz_bound, operator_norm

__all__ = [
    "AttackResult", "Certificate", "LOSSES", "NearestCenterScores", "attack_certified",
    "certified_accuracy", "certify", "eps_curve", "input_gradient_norms", "lipschitz_bound",
    "operator_norm", "pgd", "radius_grid", "robust_accuracy",
]
