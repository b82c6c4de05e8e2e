"""Search spaces: typed dimensions, architectures, and one module per model family.

Import as ``nasvit.search_spaces``. Families register themselves with :func:`register_space`.
"""

from nasvit.search_spaces.core import SearchSpace
from nasvit.search_spaces.dimensions import (
    Architecture,
    ArchitectureError,
    Choice,
    ChoiceList,
    Constraint,
    Dimension,
    LayerChoices,
    Tied,
)
from nasvit.search_spaces.registry import get_space, register_space, space_names

__all__ = [
    "Architecture",
    "ArchitectureError",
    "Choice",
    "ChoiceList",
    "Constraint",
    "Dimension",
    "LayerChoices",
    "SearchSpace",
    "Tied",
    "get_space",
    "register_space",
    "space_names",
]
