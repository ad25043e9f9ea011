"""Variational autoencoders of the paper's §3-4.

* ``VAEClassifier`` (``vae/classifier.py``): a VAE whose latent code feeds a
  classifier, trained on ELBO + lambda * CE (Eq. 21); its ``elbo`` is what
  ``manifold_ext.attacks.purify`` maximises (Eq. 22).
"""
from manifold_ext.vae.classifier import TrainingHistory, VAEClassifier, train_vae_classifier

__all__ = ["VAEClassifier", "train_vae_classifier", "TrainingHistory"]
