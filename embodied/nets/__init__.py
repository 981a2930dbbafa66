"""Shared torch modules: MLPs, critic ensembles, Gaussian policies, normalisers."""

from embodied.nets.mlp import MLP, EnsembleMLP, GaussianPolicy, Normalizer

__all__ = ["MLP", "EnsembleMLP", "GaussianPolicy", "Normalizer"]
