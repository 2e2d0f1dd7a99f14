"""cipherloop: confidential, autonomous model refinement.

The untrusted host does the bulk linear algebra on CKKS ciphertexts; a small
attested enclave holds the secret key and does only what CKKS cannot.
"""

__version__ = "0.1.0"
