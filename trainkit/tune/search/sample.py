"""Search-space domains under Ray Tune's names (``ray.tune.search.sample``).

``Float(1e-4, 1e-1).loguniform()``, ``Integer(1, 10).quantized(2)``,
``Categorical([1, 2]).sample(size=5)``, ``Function(lambda spec: ...)``.
"""

from trainkit.tune._search_space import Categorical
from trainkit.tune._search_space import Domain
from trainkit.tune._search_space import Float
from trainkit.tune._search_space import Function
from trainkit.tune._search_space import Integer
from trainkit.tune._search_space import Normal

__all__ = ["Categorical", "Domain", "Float", "Function", "Integer", "Normal"]
