"""Evaluation of trained models, fits and reenactments: one home for every score.

Modules:

- ``metrics``: PSNR / SSIM / masked and silhouette metrics on images ``(3, H, W)``.
- ``perceptual``: LPIPS (the torchvision-backbone twin of the reference network).
- ``common``: shared row iteration, rendering of dataset rows and the report writer.
- ``views``: the ``heldout_view``, ``heldout_combo``, ``val_view``, ``val_combo`` and
  ``expression_gain`` splits of a trained run.
- ``fit``: ``split=fit``, fitting held-out identities and scoring their novel views.
- ``reenact``: ``split=reenact``, tracking a driver and scoring the reenacted target.
- ``expression``: expression metrics (how far a rendered expression moves the face).
- ``report``: the demo's ``index.md`` report gathered from the evaluation JSONs.
"""
