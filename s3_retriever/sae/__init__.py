"""Top-k sparse autoencoders: the coder (:mod:`.coder`), SAE folders (:mod:`.io`), the
top-k encode kernel (:mod:`.kernels`) and the trainer (:mod:`.train`)."""

from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.io import export_sparsify, import_sparsify, load_saes, save_saes

__all__ = [
    "SAEConfig", "TopKSAE", "export_sparsify", "import_sparsify", "load_saes", "save_saes",
]
