"""Grid-prior VAEs and GMM-regularised autoencoders (paper 000 §4; theses 003/004).

* ``GridVAE`` / ``GridPrior``: VAE with a grid mixture-of-Gaussians prior (Eq. 24),
  KL by Eq. 25 (full mixture) or Eq. 27 (closest centre, fused op), guided and
  partially guided training, latent traversal, sampling from chosen centres.
* ``networks``: reusable encoder/decoder blocks for small images.
* ``metrics``: cluster accuracy/purity and per-dimension control of factors.
* ``VAEClassifier`` (``vae/classifier.py``): a VAE whose latent code feeds a
  classifier, trained on ELBO + lambda * CE (Eq. 21); its ``elbo`` is what
  ``manifold_ext.attacks.purify`` maximises (Eq. 22).
* ``RAE`` + ``ExPostGMM`` and ``GMMClassifier`` (``vae/rae.py``, thesis 004 ch. 3-4):
  regularised autoencoders with an ex-post GMM density, and the classifier with a
  Gaussian-mixture latent space, rejection (§4.6) and reclassification by decoder
  inversion (§4.7, Eq. 4.8).
"""

from manifold_ext.vae.classifier import TrainingHistory, VAEClassifier, train_vae_classifier
from manifold_ext.vae.grid_vae import GridPrior, GridVAE, train_grid_vae
from manifold_ext.vae.metrics import cluster_report, dimension_control, majority_map, purity
from manifold_ext.vae.networks import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    ResidualBlock,
    decoder_mean,
    make_decoder,
    make_encoder,
    reconstruction_nll,
)
from manifold_ext.vae.rae import RAE, ExPostGMM, GMMClassifier, train_autoencoder

__all__ = [
    "GridPrior",
    "GridVAE",
    "train_grid_vae",
    "VAEClassifier",
    "train_vae_classifier",
    "TrainingHistory",
    "RAE",
    "ExPostGMM",
    "GMMClassifier",
    "train_autoencoder",
    "cluster_report",
    "dimension_control",
    "majority_map",
    "purity",
    "ConvEncoder",
    "ConvDecoder",
    "MLPEncoder",
    "MLPDecoder",
    "ResidualBlock",
    "make_encoder",
    "make_decoder",
    "reconstruction_nll",
    "decoder_mean",
]
