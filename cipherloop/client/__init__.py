"""The data owner's SDK: keys, encrypting data and models, the scikit-learn estimator.

Runs in: owner.
"""

from .data import decrypt_model, encrypt_dataset, encrypt_model
from .estimator import EncryptedLogisticRegression

__all__ = ["EncryptedLogisticRegression", "decrypt_model", "encrypt_dataset", "encrypt_model"]
