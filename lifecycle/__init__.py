"""The model lifecycle: which student is served, how it gets there, how it is watched.

* :mod:`lifecycle.registry`: the served-model pointer and its history in Redis (one definition
  of the keys; every switch is one atomic step).
* :mod:`lifecycle.promote`: ``txwatch promote``: a candidate passes a gate of stated bounds
  before it is served; ``--rollback`` returns to the previous model.
* :mod:`lifecycle.drift`: ``txwatch drift``: the served model's live figures against its
  reference profile.

Importing this package loads nothing: each module imports what it needs.
"""
