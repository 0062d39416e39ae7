"""AugLocal: local learning whose auxiliary networks are fresh copies of a sample of the later layers.

Ma, Wu, Si, Tan. Scaling Supervised Local Learning with Augmented Auxiliary Networks. ICLR 2024
(arXiv:2402.17318); reference code github.com/ChenxiangMA/AugLocal.

The "local" schedule family (``methods/local.py``): stage k does F, B, U of batch t-k in tick t and
sends its output up detached. What differs from DGL and InfoPro is the head, "auglocal"
(``heads/auglocal.py``): stage k's auxiliary network is built from re-initialised copies of d_k layers
sampled uniformly from the layers above stage k (pyramid depth d_k, from d = 3 and c = 0.5), then global
pooling and a Linear, trained with cross-entropy. Another depth: register a variant,
``HEADS["auglocal5"] = functools.partial(auglocal_head, depth=5)``, and pass ``head="auglocal5"``.
"""
from .base import Method, configure
from .local import _checked

AUGLOCAL = Method("auglocal", "local", paper="Ma et al., ICLR 2024, arXiv:2402.17318", head="auglocal")


def make(**opts) -> Method:
    return _checked(configure(AUGLOCAL, ("head",), **opts))
