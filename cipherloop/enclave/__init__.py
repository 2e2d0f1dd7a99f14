"""The trusted code: the only cloud-side code that ever touches the secret key.

Runs in: enclave. Imports only :mod:`cipherloop.ckks`, :mod:`cipherloop.errors`
and standard or crypto libraries -- never ``cloud``, ``client`` or ``learn``
(``tests/test_boundary.py`` enforces it). Its measurement is a hash over this
package, so every line here is code the data owner vouches for.
"""
