"""Why sparse double descent happens: re-dense training, interpolation, landscapes, sharpness,
learning distance, random reinitialization against the ticket, and phase detection.

``base.py``: the :class:`Analysis` record and the ``ANALYSES`` registry; ``kinds/``: one module per analysis
(settings, compute, registration) and the catalog that imports them; ``runner.py``: the ``Analyzer`` that
runs them, cached in the store; the other modules (``hessian``, ``interpolate``, ``landscape``, ``masks``,
``curves``, ``phases``, ``claims``) are the numerics and the paper's claims."""
