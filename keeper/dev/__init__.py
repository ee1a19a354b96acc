"""Development tooling: local chains, deployments of the protocols the keeper supports, seeded positions.

Nothing here is on the daemon's import path: ``keeper run`` and ``keeper check`` never import this package.
"""
