"""``transformer_lens.utilities`` (TL 3's name for ``utils``): the same helpers as :mod:`hookscope.compat.utils`."""

from hookscope.compat.utils import *  # noqa: F403
from hookscope.compat.utils import __all__  # noqa: F401
