"""Top-k sparse autoencoders: the coder (:mod:`.coder`), SAE folders (:mod:`.io`), the
top-k encode kernel (:mod:`.kernels`) and the trainer (:mod:`.train`)."""

from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.io import load_saes, save_saes

__all__ = ["SAEConfig", "TopKSAE", "load_saes", "save_saes"]
