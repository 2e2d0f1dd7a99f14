"""The untrusted cloud service: HTTP API, metadata store, blob store and round worker.

Runs in: host. It stores and schedules ciphertexts it can't read; the
encrypted work goes through :mod:`.refiner` to :mod:`cipherloop.learn` and
the enclave. Start it with :func:`cipherloop.cloud.server.serve` (or
``python -m cipherloop.cloud.server``); build the app alone with
:func:`cipherloop.cloud.app.create_app`. The OpenAPI schema is served at
``/openapi.json`` (``/docs`` renders it).

Tenants are created by the operator through the admin endpoint, with the
admin token from ``CIPHERLOOP_ADMIN_TOKEN``::

    curl -X POST -H "Authorization: Bearer $CIPHERLOOP_ADMIN_TOKEN" \\
         -d '{"name": "acme"}' -H 'Content-Type: application/json' \\
         http://127.0.0.1:8000/v1/admin/tenants        # -> {"owner_token": ...} once

Endpoints. Auth: ``admin`` is the admin token; ``owner``, ``contrib`` and
``predict`` are the roles of tenant tokens (``any`` = all three). Every
lookup is scoped to the caller's tenant; a foreign id answers 404 exactly
like a missing one. ``[...]`` marks an optional path part.

======  ==============================================  =======  ============================
method  path                                            auth     purpose
======  ==============================================  =======  ============================
GET     /healthz                                        -        liveness
POST    /v1/admin/tenants                               admin    tenant + owner token (once)
GET     /v1/admin/tenants                               admin    list tenants
POST    /v1/admin/tenants/{tenant_id}/owner-tokens      admin    another owner token
GET     /v1/whoami                                      any      tenant and role of a token
POST    /v1/tokens                                      owner    contributor/predict token
GET     /v1/tokens                                      owner    tokens, never their secrets
DELETE  /v1/tokens/{token_id}                           owner    revoke a token
POST    /v1/contexts                                    owner    register public context
GET     /v1/contexts[/{context_id}]                     any      list / show contexts
GET     /v1/contexts/{context_id}/blob                  any      download it (to encrypt)
POST    /v1/models                                      owner    model + refinement policy
GET     /v1/models[/{model_id}]                         owner    list / show models
GET     /v1/models/{model_id}/policy                    owner    policy in force
PUT     /v1/models/{model_id}/policy                    owner    new policy revision
POST    /v1/models/{model_id}/versions                  owner    upload encrypted version
GET     /v1/models/{model_id}/versions[/{version_id}]   owner    versions with lineage
GET     /v1/models/{m}/versions/{version_id}/blob       owner    pull an encrypted version
PUT     /v1/models/{model_id}/current                   owner    roll back / forward
POST    /v1/models/{model_id}/uploads?kind=data         owner,   encrypted samples (CBOR),
                                                        contrib  idempotent by content
POST    /v1/models/{model_id}/uploads?kind=holdout      owner    the hold-out set
GET     /v1/models/{model_id}/uploads[/{upload_id}]     owner    uploads, round that used each
POST    /v1/models/{model_id}/rounds                    owner    round on new data now
GET     /v1/models/{model_id}/rounds[/{round_id}]       owner    state, inputs, verdict
POST    /v1/models/{m}/rounds/{round_id}/retry          owner    run a failed round again
POST    /v1/models/{model_id}/predict[?version_id=]     owner,   encrypted features in,
                                                        predict  encrypted scores out
GET     /v1/enclave                                     owner    platform, measurement, sim?
POST    /v1/enclave/attest                              owner    challenge in, offer (CBOR)
POST    /v1/enclave/provision                           owner    HPKE key envelope -> key id
======  ==============================================  =======  ============================

Keys reach the enclave only by attested provisioning relayed through the last
three endpoints (:mod:`.routes.enclave`; the owner's side is
:func:`cipherloop.client.provisioning.provision`): register the public
context first, then ``attest`` with ``{"nonce", "session_id"}`` (base64 of
32 and 16 bytes), verify the offer at home, and ``provision`` with
``{"session_id", "envelope"}``; the answer ``{"key_id"}`` names a key the
tenant registered (else 409). The enclave seals the key in
``<data_dir>/enclave``, so restarts need no owner. On the simulated platform
the service says so at start and names the root certificate owners pin,
``<data_dir>/enclave/platform/sim-root.crt.pem`` -- it is NOT a TEE.
"""
