"""The data owner's SDK: keys, encrypting data and models, the scikit-learn estimator.

Runs in: owner.
"""

from .data import decrypt_model, encrypt_dataset, encrypt_model
from .estimator import EncryptedLogisticRegression
from .mlp import EncryptedMLPClassifier

__all__ = ["EncryptedLogisticRegression", "EncryptedMLPClassifier", "decrypt_model",
           "encrypt_dataset", "encrypt_model"]
