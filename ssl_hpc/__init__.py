"""ssl-hpc: reproducible self-supervised and transfer learning experiments on medical images.

Data flows one way: config -> data -> models -> train -> evaluate/explain -> tracking -> aggregate.
"""

__version__ = "0.1.0"
